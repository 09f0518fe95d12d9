"""Many small jobs on one event loop, each calling the same synchronous step code a stage-by-stage run calls.

The streaming augment run (`streaming.py`) starts a job for every call an item is ready
for: e.g. `compose_and_verify(composer, verifier, [state])`, the very function the stage-by-
stage run calls with every state at once. That code is synchronous: it calls
`gen.chat(requests)` and wants the answers back. A thread per job would do it, but at
64 requests in flight per model the hops between threads (job -> batcher -> event loop ->
job -> the thread that starts the next job) and the GIL handed round hundreds of threads
cost more than the network round trip they wait on.

So a job is *replayed* instead: it runs on the loop with stand-in generators that answer
its n-th call with the n-th answer already received, or stop it (`_Waiting`) with the
requests it asked for. Those go to the role's `Lane`; when their answers are in, the job
runs again from the start, now getting one call further. Step code is deterministic given
its answers (it draws no randomness, reads no clock), so every replay makes the same
calls; a job makes at most a few calls (compose and verify per refinement round), so
replaying costs little next to a thread. Nothing runs in parallel: the bookkeeping needs
no locks, and an answer starts the next request in the same turn of the loop.

Which request goes first matters as much: each model's requests are held in a `_Gate`
while the model has as many in flight as its rate controller allows, and released best
first, by the job's priority: the calls with the most calls still to come after them
(compose, verify) before those that end a chain (judging an answer, the on-task metric).
That is list scheduling by critical path: the pipe stays full of work that unlocks more
work, and the leaves fill the gaps, instead of 200 on-task calls queued ahead of the
validity judges every answer waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from typing import Any, AsyncIterator, Callable, Iterable, Mapping, Sequence, TypeVar

T = TypeVar("T")
Work = Callable[[Mapping[str, Any]], T]  # gets the roles' generators (stand-ins), returns the job's result


class _Waiting(BaseException):
    """A job asked for answers that are not in yet. (A BaseException, so no `except Exception`
    in step code can swallow it.)"""

    def __init__(self, role: str, kind: str, requests: list[Any]) -> None:
        self.role, self.kind, self.requests = role, kind, requests


class _Job:
    """One piece of step code and the answers its calls got so far, in call order."""

    def __init__(self, work: Work, then: Callable[[Any], None], lanes: Mapping[str, "Lane"], priority: int) -> None:
        self.work, self.then, self.lanes, self.priority = work, then, lanes, priority
        self.answers: list[list[Any]] = []
        self.asked = 0  # calls made in the current replay
        self.roles = _Roles(self)

    def call(self, role: str, kind: str, requests: Sequence[Any], on_result: Callable[[int, Any], None] | None) -> list[Any]:
        if not requests:  # nothing to ask (step code does call with none left): no call, no wait
            return []
        n, self.asked = self.asked, self.asked + 1
        if n < len(self.answers):
            if on_result is not None and n == len(self.answers) - 1:  # the newest answers: reported once
                for i, r in enumerate(self.answers[n]):
                    on_result(i, r)
            return self.answers[n]
        raise _Waiting(role, kind, list(requests))


class _Roles(Mapping[str, Any]):
    """role -> the stand-in generator one job sees."""

    def __init__(self, job: _Job) -> None:
        self._job = job

    def __getitem__(self, role: str) -> "_Stand":
        return _Stand(self._job, role, self._job.lanes[role].gen)

    def __iter__(self):
        return iter(self._job.lanes)

    def __len__(self) -> int:
        return len(self._job.lanes)


class _Stand:
    """A role's generator inside a job: its identity, and calls answered by the job's replay."""

    def __init__(self, job: _Job, role: str, gen: Any) -> None:
        self._job, self._role, self._gen = job, role, gen
        self.name = gen.name

    @property
    def fingerprint(self) -> str:
        return self._gen.fingerprint

    @property
    def supports_choice_probs(self) -> bool:
        return self._gen.supports_choice_probs

    def describe(self) -> dict[str, Any]:
        return self._gen.describe()

    def chat(self, requests: Sequence[Any], on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        return self._job.call(self._role, "chat", requests, on_result)

    def choice_probs(self, requests: Sequence[Any], on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        return self._job.call(self._role, "choice", requests, on_result)


class Flow:
    """Runs jobs on the current event loop; `then(result)` runs there too, and may submit more."""

    def __init__(self, gens: Mapping[str, Any]) -> None:
        gates: dict[int, _Gate] = {}  # one per backend: roles served by one model share its limit
        for gen in gens.values():
            gates.setdefault(id(gen.inner), _Gate(gen.inner))
        self.lanes = {role: Lane(gen, gates[id(gen.inner)], self._fail) for role, gen in gens.items()}
        self._open = 0
        self._done = asyncio.Event()
        self._error: BaseException | None = None

    def submit(self, work: Work, then: Callable[[Any], None], priority: int = 0) -> None:
        """Start `work`; its calls go before those of lower `priority` jobs waiting for the same model."""
        self._open += 1
        self._advance(_Job(work, then, self.lanes, priority))

    async def run(self) -> None:
        """Until no job is left (or one failed: its error is raised here)."""
        if self._open:
            await self._done.wait()
        if self._error is not None:
            raise self._error

    def _advance(self, job: _Job) -> None:
        """Replay the job; send what it waits for, or hand its result on."""
        if self._error is not None:
            return
        try:
            job.asked = 0
            try:
                result = job.work(job.roles)
            except _Waiting as w:
                lane = self.lanes[w.role]
                lane.gate.hold(job.priority, lane, w.kind, w.requests, lambda answers: self._answered(job, answers))
                return
            self._open -= 1
            job.then(result)
        except Exception as exc:  # a bug in step code or bookkeeping: stop the run, raise it from run()
            self._fail(exc)
            return
        if self._open == 0:
            self._done.set()

    def _answered(self, job: _Job, answers: list[Any]) -> None:
        job.answers.append(answers)
        self._advance(job)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._done.set()


class Lane:
    """One role's cached generator on the loop: the requests jobs ask for in the same turn of the
    loop go out as one batch call (one cache look-up, one `achat()`), while earlier batches are
    still in flight. Each job's answers reach it the moment its last one arrives, not when
    the whole batch is done."""

    def __init__(self, gen: Any, gate: "_Gate", fail: Callable[[BaseException], None]) -> None:
        self.gen, self.gate, self._fail = gen, gate, fail
        self._queued: dict[str, list[_Ask]] = {"chat": [], "choice": []}
        self._flush_due = False
        self._tasks: set[asyncio.Task] = set()

    def ask(self, kind: str, ask: "_Ask") -> None:
        self._queued[kind].append(ask)
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        for kind, asks in self._queued.items():
            if asks:
                self._queued[kind] = []
                task = asyncio.get_running_loop().create_task(self._send(kind, asks))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send(self, kind: str, asks: list["_Ask"]) -> None:
        place = [(ask, i) for ask in asks for i in range(len(ask.requests))]
        left = {id(ask): len(ask.requests) for ask in asks}

        def arrived(j: int, outcome: Any) -> None:
            ask, i = place[j]
            ask.results[i] = outcome
            left[id(ask)] -= 1
            if left[id(ask)] == 0:
                ask.then(ask.results)
            if ask.first[i]:  # after the job moved on: what it asks next competes for this slot
                self.gate.answered()

        call = self.gen.achat if kind == "chat" else self.gen.achoice_probs
        try:
            await call([r for ask in asks for r in ask.requests], on_result=arrived)
        except Exception as exc:  # a bug: the run stops with it
            self._fail(exc)


class _Ask:
    """One job's requests to one role, and where their answers go. Equal requests in it (two
    responders' equal answers to judge) are sent once (the cache layer sees to it), so only
    the `first` of each counts as a request out."""

    def __init__(self, requests: list[Any], then: Callable[[list[Any]], None]) -> None:
        self.requests, self.then = requests, then
        self.results: list[Any] = [None] * len(requests)
        self.first = [r not in requests[:i] for i, r in enumerate(requests)]


class _Gate:
    """One model's requests from this flow: how many are out (sent, or answered from the cache
    at once), and the asks held back while that reaches the model's current limit, released
    highest priority first (then first come). The model's rate controller still decides
    what is really sent; the gate only decides the order."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.out = 0
        self._held: list[tuple[int, int, Lane, str, _Ask]] = []
        self._order = itertools.count()

    def hold(self, priority: int, lane: "Lane", kind: str, requests: list[Any], then: Callable[[list[Any]], None]) -> None:
        heapq.heappush(self._held, (-priority, next(self._order), lane, kind, _Ask(requests, then)))
        self._release()

    def answered(self) -> None:
        self.out -= 1
        self._release()

    def _limit(self) -> int:
        state = getattr(self.backend, "rate_state", None)  # AIMD's learned limit, when the model has one
        return max(1, int(state.limit)) if state is not None else int(getattr(self.backend, "concurrency", 1))

    def _release(self) -> None:
        while self._held and self.out < self._limit():
            _, _, lane, kind, ask = heapq.heappop(self._held)
            self.out += sum(ask.first)
            lane.ask(kind, ask)


def can_stream(backend: Any) -> bool:
    """Whether a backend can be called on an event loop, sharing its in-flight limit across
    overlapping calls (server models); local models answer one batch at a time and stay
    stage by stage, and so do roles sent through a provider's batch API."""
    return (callable(getattr(backend, "achat", None)) and callable(getattr(backend, "shared", None))
            and not getattr(backend, "batch", False))  # a batch role's unit is the stage's batch


@contextlib.asynccontextmanager
async def models_shared(backends: Iterable[Any]) -> AsyncIterator[None]:
    """Every backend's `shared()` open for the duration (each distinct backend once)."""
    async with contextlib.AsyncExitStack() as stack:
        seen: set[int] = set()
        for backend in backends:
            if id(backend) not in seen:
                seen.add(id(backend))
                await stack.enter_async_context(backend.shared())
        yield

"""Steps 4-6 streaming: each state moves on to its next call the moment its last one returns.

compose -> verify (-> refine) -> validity judge and on-task judge -> pair -> respond (every
responder) -> judge the answers; nothing waits for a whole stage. Every call goes through
the role's cached generator as in the stage-by-stage run, with the same request for the
same item, so the cache stays the resume log and a stage-by-stage run and a streaming one
(or a resumed one) send the same calls and get the same answers.

What makes the files identical whatever order answers arrive in:
- every result is stored under the item's place (search order; then input, responder) and
  turned into statuses, rows and failure records by `outcomes.py`, the code the
  stage-by-stage run uses, in that order, after the last call;
- duplicates are settled in search order at the end (the first of two equal texts is the
  one kept). An instruction goes on to step 5 as soon as it is verified, unless an earlier
  state already verified is written the same: waiting for every earlier state to finish
  step 4 held the whole run behind the few states still being refined (up to four round
  trips). If an earlier state is verified later with the same text, the later one is
  dropped as a duplicate all the same, and only its calls made so far were spent for
  nothing (none when, as usual, no two states are written alike);
- statuses are set from the stored results in that same order at the end, never as
  answers arrive (a state judged valid may yet turn out a duplicate);
- the answers of one pair are judged together, once all its responders have answered, as
  the stage-by-stage judge batch would (equal answers are sent once).
The on-task similarity is embedded in one batch at the end, as stage by stage. The texts
run.json's diversity embeds (every unique verified instruction, in search order) are known
once step 4 is settled for all: they are embedded then, in a thread, while the answers are
awaited, in the very batch the manifest asks for, so the manifest finds them in the cache,
float for float what it would have computed (`_embed_written`).

All of it runs on one event loop (`flow.py`): each job is the stage-by-stage step function
called for one item, replayed as its answers come in; every server model's calls share
its one HTTP session and rate controller.
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping, Sequence

from ..models import ChatOutcome, GenError
from .compose import Composed, compose_and_verify
from .config import AugmentConfig
from .decompose import decompose
from ..models.transport.endpoint import run_sync
from .flow import Flow, models_shared
from .judges import Judged, run_judge
from .outcomes import (
    ON_TASK,
    Duplicates,
    Item,
    Screened,
    finish_on_task,
    finish_respond,
    on_task_context,
    pairs_of,
    screen_answer,
    settle_composed,
    settle_validity,
)
from .respond import answer, judge_answers
from .state import InstructionState
from .validate import is_valid, judge_validity, pick_inputs

Key = tuple[int, int, int]  # (item's place among the sampled, input index, responder index)

# Which calls a model sends first when more are waiting than it may have in flight: those
# with the longest chain of calls still to come after them (see flow.py).
COMPOSE, VALIDATE, RESPOND, JUDGE_ANSWER, METRIC = 4, 3, 2, 1, 0


class StreamingSteps:
    """Steps 4-6 over the sampled items, driven by a `Flow`; `run()` returns the rows."""

    def __init__(self, live: Sequence[Item], seed_states: Mapping[int, InstructionState], inputs: Sequence[str],
                 cfg: AugmentConfig, roles: Any, embedder: Any, failures: list[dict[str, Any]], stage: Any) -> None:
        self.live, self.seed_states, self.inputs, self.cfg, self.roles = live, seed_states, inputs, cfg, roles
        self.embedder, self.failures = embedder, failures
        self.flow: Flow | None = None  # made on the loop that runs it
        self.embedding: asyncio.Future | None = None  # `_embed_written`, in a thread
        self.responders = range(len(cfg.responders))
        # results, by the item's place in `live` (and input, responder)
        self.settled: dict[int, dict[str, Any] | None] = {}  # step 4 done: its failure record, if any
        self.written: dict[str, list[int]] = {}  # text key -> the verified items written so, as they settle
        self.dropped: set[int] = set()  # an earlier item is written the same: no more calls for these
        self.validity: dict[int, Judged | GenError] = {}
        self.on_task_judged: dict[int, Judged | GenError] = {}
        self.redecomposed: dict[int, dict[str, Any] | GenError] = {}
        self.answers: dict[Key, ChatOutcome] = {}
        self.screened: dict[Key, Screened] = {}
        self.verdicts: dict[Key, Judged | GenError] = {}
        self.ticks = {name: stage(name, total) for name, total in (
            ("compose+verify", len(live)), ("validate", None), ("on-task", None), ("respond", None),
            ("judge answers", None))}

    # -- driving -----------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        run_sync(self._calls)
        return self._finish()

    async def _calls(self) -> None:
        """Every model call of steps 4-6, on this loop, each server model's shared for the duration."""
        async with models_shared(g.inner for g in self.roles.by_role.values()):
            self.flow = Flow(self.roles.by_role)
            for k in range(len(self.live)):
                self._compose(k)
            await self.flow.run()
            if self.embedding is not None:
                await self.embedding

    def _finish(self) -> list[dict[str, Any]]:
        """Failure records and rows in the stage-by-stage order, from the stored results."""
        fl, live = self.failures, self.live
        fl += [self.settled[k] for k in range(len(live)) if self.settled[k]]
        duplicates = Duplicates()
        for it in live:
            duplicates.check(it)
        unique = [k for k in range(len(live)) if live[k].status == "verified"]
        fl += [f for k in unique if (f := settle_validity(live[k], self.validity[k], self.cfg, self.roles))]
        verified = [live[k] for k in unique]
        if self.cfg.on_task and verified:
            redecomposed = [self.redecomposed.get(k) for k in unique]
            finish_on_task(verified, [self.on_task_judged[k] for k in unique], redecomposed,
                           self.seed_states, self.embedder, self.cfg, self.roles, fl)
        valid = [it for it in verified if it.status == "valid"]
        pairs = pairs_of(valid, len(self.inputs), self.cfg)
        place = {id(it): k for k, it in enumerate(self.live)}
        keys = {(p, i): (place[id(it)], j, i) for p, (it, j) in enumerate(pairs) for i in self.responders}
        return finish_respond(pairs, {pk: self.answers[key] for pk, key in keys.items()},
                              {pk: self.screened[key] for pk, key in keys.items()},
                              {pk: self.verdicts[key] for pk, key in keys.items() if key in self.verdicts},
                              self.cfg, self.roles, fl)

    # -- step 4 --------------------------------------------------------------------------------
    def _compose(self, k: int) -> None:
        cfg, state = self.cfg, self.live[k].node.state
        self.flow.submit(lambda r: compose_and_verify(r["composer"], r["verifier"], [state],
                                                    max_refinements=cfg.max_refinements,
                                                    max_tokens=cfg.compose_max_tokens)[0],
                         lambda c: self._composed(k, c), COMPOSE)

    def _composed(self, k: int, c: Composed) -> None:
        it = self.live[k]
        self.settled[k] = settle_composed(it, c, self.cfg, self.roles)
        self.ticks["compose+verify"](1)
        if len(self.settled) == len(self.live):
            self._embed_written()
        if it.status != "verified":
            return
        same = self.written.setdefault(Duplicates.key(it.instruction), [])
        same.append(k)
        first = min(same)
        self.dropped.update(m for m in same if m != first)  # a duplicate whatever else settles
        if first == k:
            self._judge(k)

    def _embed_written(self) -> None:
        """Embed, in a thread, what run.json's diversity will embed: the unique verified
        instructions in search order (`_manifest`'s `written`). The same texts in the same
        order make the same batch, so the same floats; cached, the manifest only reads them.
        (Only worth it with a cache, and while calls are still out to wait on.)"""
        if getattr(self.embedder, "cache", None) is None:
            return
        firsts = sorted(min(same) for same in self.written.values())
        texts = [self.live[k].instruction for k in firsts]
        if texts:
            self.embedding = asyncio.get_running_loop().run_in_executor(None, self.embedder.embed, texts)

    # -- step 5 and the on-task metric ----------------------------------------------------------
    def _judge(self, k: int) -> None:
        it, cfg = self.live[k], self.cfg
        self.flow.submit(lambda r: judge_validity(r["judge"], cfg.judge_mode, [it.instruction], [it.node.state.base_query],
                                                min_mass=cfg.min_choice_mass)[0],
                         lambda j: self._validated(k, j), VALIDATE)
        if not cfg.on_task:
            return
        context, material = on_task_context(it, self.seed_states)
        self.flow.submit(lambda r: run_judge(r["judge"], ON_TASK, cfg.judge_mode, [context], [material],
                                           min_mass=cfg.min_choice_mass)[0],
                         lambda j: self._on_task(k, j), METRIC)
        if cfg.on_task_decompose:
            self.flow.submit(lambda r: decompose(r["decomposer"], [it.instruction])[0],
                             lambda d: self.redecomposed.__setitem__(k, d), METRIC)

    def _on_task(self, k: int, judged: Judged | GenError) -> None:
        self.on_task_judged[k] = judged
        self.ticks["on-task"](1)

    def _validated(self, k: int, judged: Judged | GenError) -> None:
        self.validity[k] = judged
        self.ticks["validate"](1)
        cfg = self.cfg
        if k in self.dropped or isinstance(judged, GenError) or not is_valid(judged, cfg.min_validity, cfg.min_consistency):
            return
        for j in pick_inputs(self.live[k].node.state_hash, len(self.inputs), cfg.inputs_per_instruction, cfg.seed):
            for i in self.responders:
                self._respond(k, j, i)

    # -- step 6 --------------------------------------------------------------------------------
    def _respond(self, k: int, j: int, i: int) -> None:
        it, cfg = self.live[k], self.cfg
        # each responder its own seed: one model listed twice at temperature > 0 gives two samples
        self.flow.submit(lambda r: answer(r[f"responder_{i}"], [(it.instruction, self.inputs[j])],
                                        max_tokens=cfg.response_max_tokens, temperature=cfg.response_temperature,
                                        seed=cfg.seed * 1_000 + i)[0],
                         lambda r: self._answered(k, j, i, r), RESPOND)

    def _answered(self, k: int, j: int, i: int, r: ChatOutcome) -> None:
        it = self.live[k]
        self.answers[(k, j, i)] = r
        self.screened[(k, j, i)] = screen_answer(it, j, r, self.roles[f"responder_{i}"].name, self.cfg)
        self.ticks["respond"](1)
        if k in self.dropped or any((k, j, n) not in self.screened for n in self.responders):
            return  # the pair is judged once all its answers are in
        todo = [n for n in self.responders if self.screened[(k, j, n)].to_judge]
        if todo:
            cfg, material = self.cfg, [(it.instruction, self.inputs[j], self.answers[(k, j, n)].text) for n in todo]
            self.flow.submit(lambda r: judge_answers(r["judge"], cfg.judge_mode, material,
                                                   min_mass=cfg.min_choice_mass),
                             lambda verdicts: self._judged(k, j, todo, verdicts), JUDGE_ANSWER)

    def _judged(self, k: int, j: int, todo: list[int], verdicts: list[Judged | GenError]) -> None:
        for n, v in zip(todo, verdicts):
            self.verdicts[(k, j, n)] = v
        self.ticks["judge answers"](len(todo))

"""What the answers of steps 4-6 make of each sampled state, in one place for both runs.

`run_augment` makes its calls stage by stage or streaming (`streaming.py`); either way
the answers are turned into statuses, failure records and rows by these functions, from
results keyed by the same item order (search order, then input, then responder), so both
write the same files. Failure records are returned, not appended, so a streaming run can
file them in the order the stage-by-stage run writes them, whatever order they arrive in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..models import ChatOutcome, GenError
from .compose import Composed
from .config import AugmentConfig
from .judges import Judged, JudgeSpec
from .respond import best_answer
from .schemas import OnTask
from .state import InstructionState, Node
from .validate import is_valid, pick_inputs

ON_TASK = JudgeSpec("on_task", OnTask, {
    "on_task": 'The seed task is "{task_type}": {base_query}. Rate how clearly the instruction above is still '
               "this task (5: the same task with other requirements, 1: a different task).",
})

PairKey = tuple[int, int]  # (pair index, responder index)


@dataclass
class Item:
    """One sampled state on its way through steps 4-6."""

    seed_index: int
    node: Node
    status: str = "sampled"
    reason: str | None = None
    instruction: str | None = None
    rounds: int = 0
    validity: Judged | None = None
    on_task_judge: float | None = None
    on_task_similarity: float | None = None
    on_task: bool | None = None
    pairs: int = 0
    kept_rows: int = 0


def failure(stage: str, it: Item, reason: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"stage": stage, "seed": it.seed_index, "state_hash": it.node.state_hash, "hop": it.node.hop,
            "model": model, **extra, "reason": reason}


def settle_composed(it: Item, c: Composed, cfg: AugmentConfig, roles: Any) -> dict[str, Any] | None:
    """Step 4's verdict on one state; the failure record when a call failed for good."""
    it.instruction, it.rounds = c.instruction, c.rounds
    if c.failure:
        it.status, it.reason = f"{c.failure[0]}_failed", c.failure[1]
        return failure(c.failure[0], it, c.failure[1], roles["composer" if c.failure[0] == "compose" else "verifier"].name)
    if not c.verified:
        it.status = "unverified"
        it.reason = f"constraints still missing after {cfg.max_refinements} refinements: " + "; ".join(c.problems)
    else:
        it.status = "verified"
    return None


class Duplicates:
    """Two states written as the same text are one instruction: keep the first (BFS order).
    Items must be shown in that order, each once its step 4 is settled."""

    def __init__(self) -> None:
        self.first: dict[str, str] = {}

    @staticmethod
    def key(instruction: str) -> str:
        """What two texts must share to be one instruction: the words, whatever the case and spacing."""
        return " ".join(instruction.split()).casefold()

    def check(self, it: Item) -> None:
        if it.status != "verified":
            return
        key = self.key(it.instruction)
        if key in self.first:
            it.status, it.reason = "duplicate", f"written as the same text as state {self.first[key]}"
        else:
            self.first[key] = it.node.state_hash


def settle_validity(it: Item, j: Judged | GenError, cfg: AugmentConfig, roles: Any) -> dict[str, Any] | None:
    """Step 5's verdict on one instruction; the failure record when the judge failed."""
    if isinstance(j, GenError):
        it.status, it.reason = "validity_failed", j.reason
        return failure("validate", it, j.reason, roles["judge"].name)
    it.validity = j
    ok = is_valid(j, cfg.min_validity, cfg.min_consistency)
    it.status = "valid" if ok else "invalid"
    if not ok:
        it.reason = (f"validity {j.scores['validity']:.2f} (min {cfg.min_validity}), "
                     f"consistency {j.scores['consistency']:.2f} (min {cfg.min_consistency})")
    return None


def inputs_of(it: Item, pool_size: int, cfg: AugmentConfig) -> list[int]:
    """The inputs a valid instruction is paired with (and its `pairs` count)."""
    chosen = pick_inputs(it.node.state_hash, pool_size, cfg.inputs_per_instruction, cfg.seed)
    it.pairs = len(chosen)
    return chosen


def pairs_of(valid: Sequence[Item], pool_size: int, cfg: AugmentConfig) -> list[tuple[Item, int]]:
    """Every (instruction, input index) pair, in item order then input order."""
    return [(it, j) for it in valid for j in inputs_of(it, pool_size, cfg)]


def on_task_context(it: Item, seed_states: Mapping[int, InstructionState]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """(template context, judged material) of the on-task judge for one instruction."""
    seed = seed_states[it.seed_index]
    return ({"instruction": it.instruction, "task_type": seed.task_type, "base_query": seed.base_query},
            [("instruction", it.instruction)])


def finish_on_task(verified: Sequence[Item], judged: Sequence[Judged | GenError],
                   redecomposed: Sequence[dict[str, Any] | GenError | None], seed_states: Mapping[int, InstructionState],
                   embedder: Any, cfg: AugmentConfig, roles: Any, failures: list[dict[str, Any]]) -> None:
    """The on-task metric of every written instruction from its judge score and the similarity
    of its decomposed task type to the seed's (embedded in one batch, in item order)."""
    types = [seed_states[it.seed_index].task_type for it in verified]
    new_types = [None if d is None or isinstance(d, GenError) else d["tasks"][0]["task_type"] for d in redecomposed]
    texts = list(dict.fromkeys(types + [t for t in new_types if t]))
    vec = dict(zip(texts, embedder.embed(texts))) if texts else {}
    for it, j, d, t, nt in zip(verified, judged, redecomposed, types, new_types):
        if isinstance(j, GenError):
            failures.append(failure("on_task_judge", it, j.reason, roles["judge"].name))
        else:
            it.on_task_judge = j.scores["on_task"]
        if isinstance(d, GenError):
            failures.append(failure("on_task_decompose", it, d.reason, roles["decomposer"].name))
        elif d is not None:
            it.on_task_similarity = float(vec[t] @ vec[nt])
        if it.on_task_judge is not None and (it.on_task_similarity is not None or not cfg.on_task_decompose):
            it.on_task = it.on_task_judge >= cfg.on_task_min_judge and (
                not cfg.on_task_decompose or it.on_task_similarity >= cfg.on_task_min_similarity)


@dataclass
class Screened:
    """One answer before the judge: a failure (none, cut off, or broken by a code check), or
    on to the judge with its per-constraint checks."""

    failure: dict[str, Any] | None = None
    checks: list[bool | None] | None = None
    to_judge: bool = False
    checked_out: bool = False  # a code check rejected it


def load_checks() -> None:
    """Import the constraint checkers now (lm-eval's IFEval: a few tenths of a second of
    imports), and check one sample answer, which compiles most of the mapper's regular
    expressions; the first checks would pay for that. (Not a language constraint:
    langdetect's profiles take 0.4 s more to load, for runs that may have none.)"""
    try:
        from ..checks import library_version
        from ..checks.verify import check_constraints

        library_version()
        check_constraints(["Answer with at most 50 words and no commas."], "Two words.", "Answer.")
    except Exception:  # noqa: BLE001 - not installed or broken: the first check says so
        pass


def preload_checks(cfg: AugmentConfig) -> threading.Thread | None:
    """Start importing the checkers in a thread, before the seeds are decomposed (None when
    the run checks nothing); join it once they are. The import is Python code holding the
    GIL, the decomposition's round trip a wait on the network: they overlap. Joined before
    the search, it never runs beside CPU work that hands the GIL back and forth (torch ops,
    SQLite look-ups, the event loop's socket reads and writes of steps 4-6): beside such
    work every handoff waits for the import thread's switch interval, which made the
    import, started at steps 4-6, hold their first waves of requests up by more than it
    costs alone. Done at the first check instead, it would stop the loop as long."""
    if not cfg.check:
        return None
    thread = threading.Thread(target=load_checks, name="ontask-load-checks", daemon=True)
    thread.start()
    return thread


def screen_answer(it: Item, j: int, r: ChatOutcome, model: str, cfg: AugmentConfig) -> Screened:
    if isinstance(r, GenError):
        return Screened(failure("respond", it, r.reason, model, input_index=j))
    if r.truncated:  # half an answer is not a training row
        return Screened(failure("respond", it, f"the answer was cut off at max_tokens={cfg.response_max_tokens}",
                                model, input_index=j))
    if not (cfg.check and it.node.state.constraints):
        return Screened(to_judge=True)
    from ..checks.verify import check_constraints  # the checker library loads only for augment

    results = check_constraints([c.text for c in it.node.state.constraints], r.text, it.instruction)
    checks = [c.passed for c in results]
    broken = [c for c in results if c.passed is False]
    if broken:  # code can tell: no need to ask the judge
        return Screened(failure("check", it, "; ".join(f"violates '{c.constraint}' ({c.reason})" for c in broken),
                                model, input_index=j), checks, checked_out=True)
    return Screened(checks=checks, to_judge=True)


def finish_respond(pairs: Sequence[tuple[Item, int]], answers: Mapping[PairKey, ChatOutcome],
                   screened: Mapping[PairKey, Screened], verdicts: Mapping[PairKey, Judged | GenError],
                   cfg: AugmentConfig, roles: Any, failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step 6's rows (the best judged answer per pair) and its failures: the answers' in (pair,
    responder) order, then the judge's in the same order."""
    responders = range(len(cfg.responders))
    failures += [screened[(p, i)].failure for p in range(len(pairs)) for i in responders if screened[(p, i)].failure]
    by_pair: dict[int, list[tuple[int, Judged]]] = {}
    for (p, i) in sorted(verdicts):
        v = verdicts[(p, i)]
        if isinstance(v, GenError):
            it, j = pairs[p]
            failures.append(failure("judge_answer", it, v.reason, roles["judge"].name, input_index=j,
                                    responder=roles[f"responder_{i}"].name))
        else:
            by_pair.setdefault(p, []).append((i, v))
    rows = []
    for p, (it, j) in enumerate(pairs):
        best = best_answer(by_pair.get(p, []))
        if best is None:
            checked_out = any(screened[(p, i)].checked_out for i in responders)
            status = "check_failed" if checked_out and not by_pair.get(p) else "unanswered"
            rows.append({"_pair": p, "_status": status, "_item": it, "input_index": j})
            continue
        i, v = best
        status = "kept" if cfg.min_response_score is None or v.mean >= cfg.min_response_score else "below_floor"
        rows.append({"_pair": p, "_status": status, "_item": it, "input_index": j, "responder": i, "judged": v,
                     "response": answers[(p, i)].text, "candidates": [(k, w.mean) for k, w in by_pair[p]],
                     "checks": screened[(p, i)].checks})
        if status == "kept":
            it.kept_rows += 1
    return rows

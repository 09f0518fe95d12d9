"""`ontask augment`: the six TCIA steps end to end, with a funnel.

Steps 1 (decompose the seeds) and 3 (search) run first; then steps 4-6 stream (see
`streaming.py`): every sampled state goes on to its next call (compose, verify, judge
validity and on-task, pair with inputs, answer with every responder, judge the answers)
the moment its previous call returns, each server model keeping its own in-flight limit
over all the overlapping calls. Runs with a local model in any role (in-process or Ray
engine), or with `streaming: false`, make the calls stage by stage instead, each stage's
calls at once (the backends batch them). Both ways write the same files: the answers are
turned into statuses, rows and failure records by the same code (`outcomes.py`), in the
items' search order, never in arrival order.

Every answer lands in the content-addressed cache the moment it arrives, so the cache is
the resume log: a killed run, started again, replays its answered calls from the cache
and only pays for the rest. All randomness is seeded by the run seed and the content it
concerns (the seed state, each state's hash), never by arrival order, so a resumed run
writes what an uninterrupted one would (exactly so with server models and the test
suite's checks; a local model on a GPU may differ in the last bits when the remaining
prompts are batched differently).

Outputs, all written atomically at the end (a failed run leaves the previous outputs):
- data.jsonl: one row per kept (instruction, input, response), with judge scores and
  lineage (seed, hop, edit path, state hash);
- instructions.jsonl: every state the search produced, with what became of it and why;
- failed.jsonl: every call that failed for good, with the stage and the reason;
- run.json: configuration, models, the funnel (and its drops per reason), diversity and
  on-task ratio per hop, usage per role, timings.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


from ..models.transport.endpoint import public_url
from ..cache import ResultCache
from ..models import CachedGenerator, GenError, Generator, ModelSpec, load_generator
from ..io.writers import AtomicWriter, write_json_atomic
from ..runs import versions
from .compose import compose_and_verify
from .config import AugmentConfig
from .decompose import decompose, states_of
from .flow import can_stream
from .judges import Judged, resolve_mode, run_judge
from .metrics import distances_per_hop, per_hop, ratio_per_hop
from .outcomes import (
    ON_TASK,
    Duplicates,
    Item,
    finish_on_task,
    finish_respond,
    on_task_context,
    pairs_of,
    preload_checks,
    screen_answer,
    settle_composed,
    settle_validity,
)
from .prompts import templates_digest
from .respond import RESPONSE, answer, judge_answers
from .search import SearchConfig, explore
from .state import InstructionState
from .streaming import StreamingSteps
from .validate import VALIDITY, judge_validity

__all__ = ["ON_TASK", "Item", "Roles", "Seed", "local_loader", "plan_augment", "run_augment"]

Tick = Callable[[int], None]
StageProgress = Callable[[str, int | None], Tick]  # total None: not known up front (streaming)


@dataclass(frozen=True)
class Seed:
    """A seed instruction, and its decomposition when the user supplied one."""

    instruction: str
    state: InstructionState | None = None
    source: str = ""


def local_loader(cfg: AugmentConfig) -> Callable[[ModelSpec], Generator]:
    """Backends in this process. A spec carries its own options (base_url, concurrency, ...);
    the run adds its policies (rate control, the local repetition penalty)."""
    return lambda spec: load_generator(spec, rate=cfg.rate, repetition_penalty=cfg.local_repetition_penalty)


class Roles:
    """One loaded backend per distinct model spec, one cached view (and stats) per role.

    `loader` builds a backend from a spec (default: in this process; `ontask.api` passes the
    Ray engine's loader for `--engine ray`)."""

    def __init__(self, cfg: AugmentConfig, cache: ResultCache | None, loader: Callable[[ModelSpec], Generator] | None = None) -> None:
        load = loader or local_loader(cfg)
        backends: dict[ModelSpec, Generator] = {}  # one per distinct spec: two servers stay two
        self.by_role: dict[str, CachedGenerator] = {}
        self.specs = cfg.roles()
        for role, spec in self.specs.items():
            if spec not in backends:
                backends[spec] = load(spec)
            self.by_role[role] = CachedGenerator(backends[spec], cache)

    def __getitem__(self, role: str) -> CachedGenerator:
        return self.by_role[role]

    def describe(self) -> dict[str, Any]:
        out = {}
        for role, g in self.by_role.items():
            out[role] = {**g.describe(), "calls": g.stats.to_json()}
            cost = self.specs[role].cost(g.stats.prompt_tokens, g.stats.completion_tokens)
            if cost is not None:  # the role's price is set: what its sent calls cost (cached ones are free)
                out[role]["cost_usd"] = round(cost, 6)
            state = getattr(g.inner, "rate_state", None)  # openai: models share it across roles
            if state is not None:
                out[role]["rate_state"] = state.to_json()
        return out


def run_augment(seeds: Sequence[Seed], inputs: Sequence[str], cfg: AugmentConfig, out_dir: str | Path, *,
                db: Any, embedder: Any, roles: Roles, progress: StageProgress | None = None) -> dict[str, Any]:
    """Run the six steps and write the run directory; returns the manifest (run.json)."""
    with frozen_heap():
        return _run_augment(seeds, inputs, cfg, out_dir, db=db, embedder=embedder, roles=roles, progress=progress)


_freeze_lock = threading.Lock()
_freeze_depth = 0  # runs inside `frozen_heap` now (threads may run several)
_freeze_ours = False  # whether the outermost one froze the heap (not someone before it)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep what the process already holds out of the cyclic garbage collector's full passes
    while runs last (`gc.freeze`, then `gc.unfreeze` when the last one ends; left alone when
    someone else had frozen the heap already). The models, the embedder, the database and
    every imported library are half a million objects that all live to the end, and a full
    pass walks every one of them: 0.25-0.3 s each time the allocation count happens to
    trigger one. Mid-run that stops the event loop with a wave of answers waiting to be
    read; frozen, a full pass walks only what the run itself made."""
    global _freeze_depth, _freeze_ours
    with _freeze_lock:
        if _freeze_depth == 0:
            _freeze_ours = gc.get_freeze_count() == 0
            if _freeze_ours:
                gc.freeze()
        _freeze_depth += 1
    try:
        yield
    finally:
        with _freeze_lock:
            _freeze_depth -= 1
            if _freeze_depth == 0 and _freeze_ours:
                gc.unfreeze()


def _run_augment(seeds: Sequence[Seed], inputs: Sequence[str], cfg: AugmentConfig, out_dir: str | Path, *,
                 db: Any, embedder: Any, roles: Roles, progress: StageProgress | None = None) -> dict[str, Any]:
    if not inputs:
        raise ValueError("the input pool is empty: augment needs real inputs of the task to pair with")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for g in roles.by_role.values():  # roles sent as provider batches keep their log with the run
        if getattr(g.inner, "batch", False):
            g.inner.batch_log = out / "batches.jsonl"
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    failures: list[dict[str, Any]] = []
    stage = progress or (lambda name, total: (lambda n: None))

    def lap(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 3)

    checks = preload_checks(cfg)  # while the seeds' decomposition is out

    # step 1: decompose the seeds that came as plain text
    s = time.perf_counter()
    seed_states = _decompose_seeds(seeds, roles["decomposer"], failures, stage)
    if checks is not None:
        checks.join()  # before the search: see preload_checks
    lap("decompose", s)

    # step 3: search (step 2, the database, is built beforehand by `ontask db build`)
    s = time.perf_counter()
    items: list[Item] = []
    search_counts: list[dict[str, Any]] = []
    tick = stage("search", len(seed_states))
    for idx, state in seed_states.items():
        result = explore(state, db, embedder.embed, _search_config(cfg, state))
        sampled = {n.state_hash for n in result.sampled}
        for node in result.nodes:
            item = Item(idx, node)
            if node.state_hash not in sampled:
                item.status, item.reason = "not_sampled", f"not among the {cfg.samples} sampled states"
            items.append(item)
        search_counts.append({"seed": idx, "states": len(result.nodes), "sampled": len(result.sampled),
                              **result.counts.to_json()})
        tick(1)
    lap("search", s)
    live = [it for it in items if it.status == "sampled"]

    # steps 4-6: compose, verify, refine; validity; on-task metric; pair, answer, judge, keep the best
    s = time.perf_counter()
    if cfg.streaming and all(can_stream(g.inner) for g in roles.by_role.values()):
        rows = StreamingSteps(live, seed_states, inputs, cfg, roles, embedder, failures, stage).run()
        lap("steps_4_6", s)
    else:
        rows = _steps_by_stage(live, seed_states, inputs, cfg, roles, embedder, failures, stage, lap)

    manifest = _manifest(cfg, seeds, seed_states, items, rows, failures, search_counts, roles, db, embedder, timings, t0)
    _write_outputs(out, items, rows, failures, manifest, inputs, cfg, seed_states)
    return manifest


# -- stages ------------------------------------------------------------------------------
def plan_augment(seeds: Sequence[Seed], inputs: Sequence[str], cfg: AugmentConfig, *, db: Any, embedder: Any,
                 roles: Roles) -> dict[str, Any]:
    """What `run_augment` will do (`augment --dry-run`): steps 1 and 3 for real (the seeds'
    decomposition, through the cache, and the search, which calls no model), so the states
    explored and sampled are exact; then the most calls each role can make in steps 4-6
    (every state composed with every refinement, every instruction valid, every answer
    judged): drops only lower them. Tokens and cost are not estimated: the prompts of
    steps 4-6 hold texts that do not exist before the run writes them."""
    failures: list[dict[str, Any]] = []
    seed_states = _decompose_seeds(seeds, roles["decomposer"], failures, lambda name, total: (lambda n: None))
    explored = sampled = 0
    for state in seed_states.values():
        result = explore(state, db, embedder.embed, _search_config(cfg, state))
        explored, sampled = explored + len(result.nodes), sampled + len(result.sampled)
    s, p, r = sampled, min(cfg.inputs_per_instruction, len(inputs)), len(cfg.responders)
    mode = resolve_mode(cfg.judge_mode, roles["judge"])
    per_item = (lambda spec: len(spec.dims)) if mode == "logprob" else (lambda spec: 1)  # one call per dimension
    calls = {
        "decomposer": sum(seed.state is None for seed in seeds) + (s if cfg.on_task and cfg.on_task_decompose else 0),
        "composer": s * (1 + cfg.max_refinements),
        "verifier": s * (1 + cfg.max_refinements),
        "judge": s * per_item(VALIDITY) + (s * per_item(ON_TASK) if cfg.on_task else 0) + s * p * r * per_item(RESPONSE),
        **{f"responder_{i}": s * p for i in range(r)},
    }
    return {"seeds": len(seeds), "seeds_usable": len(seed_states), "seed_failures": failures,
            "states_explored": explored, "states_sampled": s, "pairs_at_most": s * p, "rows_at_most": s * p,
            "judge_mode": mode, "calls_at_most": calls,
            "models": {role: str(spec) for role, spec in cfg.roles().items()}}


def _decompose_seeds(seeds, decomposer, failures, stage) -> dict[int, InstructionState]:
    states = {}
    for i, s in enumerate(seeds):
        if s.state is not None and not s.state.constraints:
            failures.append({"stage": "seed", "seed": i, "source": s.source, "model": None,
                             "reason": "the seed has no constraints: nothing to edit"})
        elif s.state is not None:
            states[i] = s.state
    todo = [i for i, s in enumerate(seeds) if s.state is None]
    tick = stage("decompose", len(todo))
    results = decompose(decomposer, [seeds[i].instruction for i in todo], seed=True, on_done=lambda j, r: tick(1))
    for i, r in zip(todo, results):
        if isinstance(r, GenError):
            failures.append({"stage": "decompose", "seed": i, "source": seeds[i].source, "model": decomposer.name, "reason": r.reason})
            continue
        found = states_of(r)
        state = found[0]
        if not state.constraints:
            failures.append({"stage": "decompose", "seed": i, "source": seeds[i].source, "model": decomposer.name,
                             "reason": "the seed decomposed into no constraints: nothing to edit (give it explicit "
                                       "constraints, or a decomposed seed with task_type/base_query/constraints)"})
            continue
        states[i] = state
    return dict(sorted(states.items()))


def _search_config(cfg: AugmentConfig, seed_state: InstructionState) -> SearchConfig:
    """The search's RNG seed comes from the run seed and the seed state itself, so adding a
    seed to the file does not change the searches of the others."""
    rng_seed = int(hashlib.sha256(f"{cfg.seed}:{seed_state.state_hash}".encode()).hexdigest()[:12], 16)
    return SearchConfig(hops=cfg.hops, per_op=cfg.per_op, max_states=cfg.max_states, samples=cfg.samples,
                        seed=rng_seed, near_duplicate=cfg.near_duplicate)


def _steps_by_stage(live: list[Item], seed_states, inputs: Sequence[str], cfg: AugmentConfig, roles: Roles,
                    embedder: Any, failures: list[dict[str, Any]], stage: StageProgress,
                    lap: Callable[[str, float], None]) -> list[dict[str, Any]]:
    """Steps 4-6 one stage after another, each stage's calls in one batch per role (local
    models batch them; `cfg.streaming=False` forces it for server models too)."""
    # step 4: compose, verify, refine
    s = time.perf_counter()
    composed = compose_and_verify(roles["composer"], roles["verifier"], [it.node.state for it in live],
                                  max_refinements=cfg.max_refinements, max_tokens=cfg.compose_max_tokens,
                                  tick=stage("compose+verify", len(live)))
    failures += [f for it, c in zip(live, composed) if (f := settle_composed(it, c, cfg, roles))]
    lap("compose_verify", s)
    duplicates = Duplicates()
    for it in live:
        duplicates.check(it)
    verified = [it for it in live if it.status == "verified"]

    # step 5: validity and self-consistency
    s = time.perf_counter()
    tick = stage("validate", len(verified))
    judged = judge_validity(roles["judge"], cfg.judge_mode, [it.instruction for it in verified],
                            [it.node.state.base_query for it in verified], min_mass=cfg.min_choice_mass)
    tick(len(verified))
    failures += [f for it, j in zip(verified, judged) if (f := settle_validity(it, j, cfg, roles))]
    lap("validate", s)

    # metric: on-task ratio of every written instruction (judge + decomposed task type similarity)
    s = time.perf_counter()
    if cfg.on_task and verified:
        tick = stage("on-task", len(verified))
        contexts = [on_task_context(it, seed_states) for it in verified]
        on_task = run_judge(roles["judge"], ON_TASK, cfg.judge_mode, [c for c, _ in contexts],
                            [m for _, m in contexts], min_mass=cfg.min_choice_mass)
        redecomposed = (decompose(roles["decomposer"], [it.instruction for it in verified]) if cfg.on_task_decompose
                        else [None] * len(verified))
        tick(len(verified))
        finish_on_task(verified, on_task, redecomposed, seed_states, embedder, cfg, roles, failures)
    lap("on_task", s)

    # step 5b + 6: pair with inputs, answer, judge, keep the best
    s = time.perf_counter()
    pairs = pairs_of([it for it in verified if it.status == "valid"], len(inputs), cfg)
    texts = [(it.instruction, inputs[j]) for it, j in pairs]
    responders = range(len(cfg.responders))
    tick = stage("respond", len(pairs) * len(responders))
    # each responder its own seed: one model listed twice at temperature > 0 gives two samples
    answers = {(p, i): r for i in responders
               for p, r in enumerate(answer(roles[f"responder_{i}"], texts, max_tokens=cfg.response_max_tokens,
                                            temperature=cfg.response_temperature, seed=cfg.seed * 1_000 + i, tick=tick))}
    screened = {(p, i): screen_answer(it, j, answers[(p, i)], roles[f"responder_{i}"].name, cfg)
                for p, (it, j) in enumerate(pairs) for i in responders}
    todo = [key for key, sc in screened.items() if sc.to_judge]  # (pair, responder) order
    tick = stage("judge answers", len(todo))
    verdicts = judge_answers(roles["judge"], cfg.judge_mode,
                             [(texts[p][0], texts[p][1], answers[(p, i)].text) for p, i in todo],
                             min_mass=cfg.min_choice_mass)
    tick(len(todo))
    rows = finish_respond(pairs, answers, screened, dict(zip(todo, verdicts)), cfg, roles, failures)
    lap("respond", s)
    return rows


# -- outputs -----------------------------------------------------------------------------
def _data_row(row: dict[str, Any], inputs: Sequence[str], cfg: AugmentConfig, seed_states) -> dict[str, Any]:
    it: Item = row["_item"]
    v: Judged = row["judged"]
    state = it.node.state
    return {
        "instruction": it.instruction,
        "input": inputs[row["input_index"]],
        "response": row["response"],
        "model": cfg.responders[row["responder"]],
        **{f"judge_{d}": round(x, 4) for d, x in v.scores.items()},
        "judge_mean": round(v.mean, 4),
        "judge_mode": v.mode,
        "judge_mass": None if v.mass is None else round(v.mass, 4),
        "candidates": [{"model": cfg.responders[k], "judge_mean": round(m, 4)} for k, m in row["candidates"]],
        "validity": round(it.validity.scores["validity"], 4),
        "consistency": round(it.validity.scores["consistency"], 4),
        "seed": it.seed_index,
        "seed_task_type": seed_states[it.seed_index].task_type,
        "hop": it.node.hop,
        "edit_path": [e.to_json() for e in it.node.path],
        "state_hash": it.node.state_hash,
        "task_type": state.task_type,
        "base_query": state.base_query,
        "constraints": [c.to_json() for c in state.constraints],
        "constraint_checks": row.get("checks"),  # aligned with constraints: True, False, None (no checker)
        "input_index": row["input_index"],
    }


def _instruction_row(it: Item) -> dict[str, Any]:
    return {
        "seed": it.seed_index, "hop": it.node.hop, "state_hash": it.node.state_hash, "parent": it.node.parent,
        "status": it.status, "reason": it.reason, "instruction": it.instruction, "rounds": it.rounds,
        "validity": None if it.validity is None else {k: round(x, 4) for k, x in it.validity.scores.items()},
        "validity_mass": None if it.validity is None or it.validity.mass is None else round(it.validity.mass, 4),
        "on_task": it.on_task, "on_task_judge": it.on_task_judge,
        "on_task_similarity": None if it.on_task_similarity is None else round(it.on_task_similarity, 4),
        "pairs": it.pairs, "kept_rows": it.kept_rows,
        "edit_path": [e.to_json() for e in it.node.path], **it.node.state.to_json(),
    }


def _funnel(items: list[Item], rows: list[dict[str, Any]], n_seeds: int, seeds_used: int) -> dict[str, Any]:
    count = lambda *st: sum(1 for it in items if it.status in st)  # noqa: E731
    sampled = len(items) - count("not_sampled")
    composed = sampled - count("compose_failed")
    verified = composed - count("verify_failed", "unverified")
    unique = verified - count("duplicate")
    valid = count("valid")
    paired = len(rows)
    check_failed = sum(1 for r in rows if r["_status"] == "check_failed")
    answered = sum(1 for r in rows if r["_status"] not in ("unanswered", "check_failed"))
    kept = sum(1 for r in rows if r["_status"] == "kept")
    return {
        "seeds": n_seeds, "seeds_used": seeds_used,
        "states_explored": len(items), "sampled": sampled, "composed": composed, "verified": verified,
        "unique": unique, "valid": valid, "paired": paired, "answered": answered, "kept": kept,
        "drops": {
            "not_sampled": count("not_sampled"), "compose_failed": count("compose_failed"),
            "verify_failed": count("verify_failed"), "unverified": count("unverified"),
            "duplicate": count("duplicate"), "validity_failed": count("validity_failed"), "invalid": count("invalid"),
            "unanswered": paired - answered - check_failed, "check_failed": check_failed, "below_floor": answered - kept,
        },
    }


def _manifest(cfg, seeds, seed_states, items, rows, failures, search_counts, roles, db, embedder, timings, t0) -> dict[str, Any]:
    written = [it for it in items if it.instruction and it.status in ("valid", "invalid", "validity_failed")]  # unique texts
    kept_items = [it for it in items if it.status == "valid"]
    vec_written = embedder.embed([it.instruction for it in written]) if written else None
    vec_kept = embedder.embed([it.instruction for it in kept_items]) if kept_items else None
    div_written = per_hop([it.node.hop for it in written], vec_written) if written else {}
    div_kept = per_hop([it.node.hop for it in kept_items], vec_kept) if kept_items else {}
    models = roles.describe()
    costs = [m["cost_usd"] for m in models.values() if "cost_usd" in m]
    return {
        "command": "augment",
        "config": {**cfg.model_dump(mode="json"), "base_url": public_url(cfg.base_url) if cfg.base_url else None},
        "versions": versions(),
        "templates": templates_digest(),
        "models": models,
        "cost_usd": round(sum(costs), 6) if costs else None,  # the priced roles' spent cost
        "judge_mode": resolve_mode(cfg.judge_mode, roles["judge"]),
        "embedder": getattr(embedder, "name", str(embedder)),
        "database": db.describe() if hasattr(db, "describe") else None,
        "seeds": [{"index": i, "source": s.source, "instruction": s.instruction,
                   "state": seed_states[i].to_json() if i in seed_states else None} for i, s in enumerate(seeds)],
        "funnel": _funnel(items, rows, len(seeds), len(seed_states)),
        "search": search_counts,
        "diversity": {"verified": div_written, "valid": div_kept, "valid_by_seed": {
            str(i): per_hop([it.node.hop for it in kept_items if it.seed_index == i],
                            embedder.embed([it.instruction for it in kept_items if it.seed_index == i]))
            for i in sorted({it.seed_index for it in kept_items})} if len(seed_states) > 1 else None,
            # Samples of 1 - cosine per hop, for the report's density curves.
            "distances": {"verified": distances_per_hop([it.node.hop for it in written], vec_written) if written else {},
                          "valid": distances_per_hop([it.node.hop for it in kept_items], vec_kept) if kept_items else {}}},
        "on_task": ratio_per_hop([it.node.hop for it in written], [it.on_task for it in written]) if cfg.on_task else None,
        "failures": len(failures),
        "timings_s": {**timings, "total": round(time.perf_counter() - t0, 3)},
    }


def _write_outputs(out: Path, items: list[Item], rows: list[dict[str, Any]], failures: list[dict[str, Any]],
                   manifest: dict[str, Any], inputs: Sequence[str], cfg: AugmentConfig,
                   seed_states: dict[int, InstructionState]) -> None:
    data = [_data_row(r, inputs, cfg, seed_states) for r in rows if r["_status"] == "kept"]
    with AtomicWriter(out / "instructions.jsonl") as w:
        w.write([_instruction_row(it) for it in items])
    with AtomicWriter(out / "failed.jsonl") as w:
        w.write(failures)
    with AtomicWriter(out / "data.jsonl") as w:
        w.write(data)
    manifest["outputs"] = {"data": str(out / "data.jsonl"), "instructions": str(out / "instructions.jsonl"),
                           "failed": str(out / "failed.jsonl"), "rows": len(data)}
    write_json_atomic(out / "run.json", manifest)

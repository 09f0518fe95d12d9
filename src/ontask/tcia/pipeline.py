"""`ontask augment`: the six TCIA steps end to end, stage by stage, with a funnel.

Each stage sends all of its calls at once (the backends batch or run them concurrently)
and every answer lands in the content-addressed cache the moment it arrives, so the
cache is the resume log: a killed run, started again, replays its answered calls from
the cache and only pays for the rest. All randomness is seeded by the run seed and the
content it concerns (the seed state, each state's hash), never by arrival order, so a
resumed run writes what an uninterrupted one would (exactly so with server models and
the test suite's checks; a local model on a GPU may differ in the last bits when the
remaining prompts are batched differently).

Outputs, all written atomically at the end (a failed run leaves the previous outputs):
- data.jsonl: one row per kept (instruction, input, response), with judge scores and
  lineage (seed, hop, edit path, state hash);
- instructions.jsonl: every state the search produced, with what became of it and why;
- failed.jsonl: every call that failed for good, with the stage and the reason;
- run.json: configuration, models, the funnel (and its drops per reason), diversity and
  on-task ratio per hop, usage per role, timings.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence


from ..models.transport.endpoint import public_url
from ..cache import ResultCache
from ..models import CachedGenerator, GenError, Generator, ModelSpec, load_generator
from ..io.writers import AtomicWriter, write_json_atomic
from ..runs import versions
from .compose import compose_and_verify
from .config import AugmentConfig
from .decompose import decompose, states_of
from .judges import Judged, JudgeSpec, resolve_mode, run_judge
from .metrics import distances_per_hop, per_hop, ratio_per_hop
from .prompts import templates_digest
from .respond import RESPONSE, answer, best_answer, judge_answers
from .schemas import OnTask
from .search import SearchConfig, explore
from .state import InstructionState, Node
from .validate import VALIDITY, is_valid, judge_validity, pick_inputs

Tick = Callable[[int], None]
StageProgress = Callable[[str, int], Tick]

ON_TASK = JudgeSpec("on_task", OnTask, {
    "on_task": 'The seed task is "{task_type}": {base_query}. Rate how clearly the instruction below is still '
               "this task (5: the same task with other requirements, 1: a different task).",
})


@dataclass(frozen=True)
class Seed:
    """A seed instruction, and its decomposition when the user supplied one."""

    instruction: str
    state: InstructionState | None = None
    source: str = ""


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
    if not inputs:
        raise ValueError("the input pool is empty: augment needs real inputs of the task to pair with")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    failures: list[dict[str, Any]] = []
    stage = progress or (lambda name, total: (lambda n: None))

    def lap(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 3)

    # step 1: decompose the seeds that came as plain text
    s = time.perf_counter()
    seed_states = _decompose_seeds(seeds, roles["decomposer"], failures, stage)
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

    # step 4: compose, verify, refine
    s = time.perf_counter()
    composed = compose_and_verify(roles["composer"], roles["verifier"], [it.node.state for it in live],
                                  max_refinements=cfg.max_refinements, max_tokens=cfg.compose_max_tokens,
                                  tick=stage("compose+verify", len(live)))
    for it, c in zip(live, composed):
        it.instruction, it.rounds = c.instruction, c.rounds
        if c.failure:
            it.status, it.reason = f"{c.failure[0]}_failed", c.failure[1]
            failures.append(_failure(c.failure[0], it, c.failure[1], roles["composer" if c.failure[0] == "compose" else "verifier"].name))
        elif not c.verified:
            it.status = "unverified"
            it.reason = f"constraints still missing after {cfg.max_refinements} refinements: " + "; ".join(c.problems)
        else:
            it.status = "verified"
    lap("compose_verify", s)
    _drop_duplicate_texts(live)
    verified = [it for it in live if it.status == "verified"]

    # step 5: validity and self-consistency
    s = time.perf_counter()
    tick = stage("validate", len(verified))
    judged = judge_validity(roles["judge"], cfg.judge_mode, [it.instruction for it in verified],
                            [it.node.state.base_query for it in verified], min_mass=cfg.min_choice_mass)
    tick(len(verified))
    for it, j in zip(verified, judged):
        if isinstance(j, GenError):
            it.status, it.reason = "validity_failed", j.reason
            failures.append(_failure("validate", it, j.reason, roles["judge"].name))
        else:
            it.validity = j
            ok = is_valid(j, cfg.min_validity, cfg.min_consistency)
            it.status = "valid" if ok else "invalid"
            if not ok:
                it.reason = (f"validity {j.scores['validity']:.2f} (min {cfg.min_validity}), "
                             f"consistency {j.scores['consistency']:.2f} (min {cfg.min_consistency})")
    lap("validate", s)

    # metric: on-task ratio of every written instruction (judge + decomposed task type similarity)
    s = time.perf_counter()
    if cfg.on_task:
        _judge_on_task(verified, seed_states, roles, embedder, cfg, failures, stage)
    lap("on_task", s)

    # step 5b + 6: pair with inputs, answer, judge, keep the best
    s = time.perf_counter()
    valid = [it for it in verified if it.status == "valid"]
    rows = _respond(valid, inputs, cfg, roles, failures, stage)
    lap("respond", s)

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


def _drop_duplicate_texts(items: list[Item]) -> None:
    """Two states written as the same text are one instruction: keep the first (BFS order)."""
    first: dict[str, str] = {}
    for it in items:
        if it.status != "verified":
            continue
        key = " ".join(it.instruction.split()).casefold()
        if key in first:
            it.status, it.reason = "duplicate", f"written as the same text as state {first[key]}"
        else:
            first[key] = it.node.state_hash


def _search_config(cfg: AugmentConfig, seed_state: InstructionState) -> SearchConfig:
    """The search's RNG seed comes from the run seed and the seed state itself, so adding a
    seed to the file does not change the searches of the others."""
    rng_seed = int(hashlib.sha256(f"{cfg.seed}:{seed_state.state_hash}".encode()).hexdigest()[:12], 16)
    return SearchConfig(hops=cfg.hops, per_op=cfg.per_op, max_states=cfg.max_states, samples=cfg.samples,
                        seed=rng_seed, near_duplicate=cfg.near_duplicate)


def _judge_on_task(verified: list[Item], seed_states, roles, embedder, cfg, failures, stage) -> None:
    if not verified:
        return
    tick = stage("on-task", len(verified))
    contexts = [{"instruction": it.instruction, "task_type": seed_states[it.seed_index].task_type,
                 "base_query": seed_states[it.seed_index].base_query} for it in verified]
    judged = run_judge(roles["judge"], ON_TASK, cfg.judge_mode, contexts, [[("instruction", it.instruction)] for it in verified],
                       min_mass=cfg.min_choice_mass)
    redecomposed = (decompose(roles["decomposer"], [it.instruction for it in verified]) if cfg.on_task_decompose
                    else [None] * len(verified))
    tick(len(verified))
    types = [seed_states[it.seed_index].task_type for it in verified]
    new_types = [None if d is None or isinstance(d, GenError) else d["tasks"][0]["task_type"] for d in redecomposed]
    texts = list(dict.fromkeys(types + [t for t in new_types if t]))
    vec = dict(zip(texts, embedder.embed(texts))) if texts else {}
    for it, j, d, t, nt in zip(verified, judged, redecomposed, types, new_types):
        if isinstance(j, GenError):
            failures.append(_failure("on_task_judge", it, j.reason, roles["judge"].name))
        else:
            it.on_task_judge = j.scores["on_task"]
        if isinstance(d, GenError):
            failures.append(_failure("on_task_decompose", it, d.reason, roles["decomposer"].name))
        elif d is not None:
            it.on_task_similarity = float(vec[t] @ vec[nt])
        if it.on_task_judge is not None and (it.on_task_similarity is not None or not cfg.on_task_decompose):
            it.on_task = it.on_task_judge >= cfg.on_task_min_judge and (
                not cfg.on_task_decompose or it.on_task_similarity >= cfg.on_task_min_similarity)


def _respond(valid: list[Item], inputs: Sequence[str], cfg: AugmentConfig, roles: Roles, failures, stage) -> list[dict[str, Any]]:
    pairs: list[tuple[Item, int]] = []
    for it in valid:
        chosen = pick_inputs(it.node.state_hash, len(inputs), cfg.inputs_per_instruction, cfg.seed)
        it.pairs = len(chosen)
        pairs += [(it, j) for j in chosen]
    texts = [(it.instruction, inputs[j]) for it, j in pairs]
    responders = [(i, roles[f"responder_{i}"]) for i in range(len(cfg.responders))]
    tick = stage("respond", len(pairs) * len(responders))
    # each responder its own seed: one model listed twice at temperature > 0 gives two samples
    answers = {i: answer(g, texts, max_tokens=cfg.response_max_tokens, temperature=cfg.response_temperature,
                         seed=cfg.seed * 1_000 + i, tick=tick) for i, g in responders}
    from ..checks.verify import check_constraints  # the checker library loads only for augment

    # judge every answer that exists and passes the code checks of its constraints, in one batch
    todo: list[tuple[int, int]] = []  # (pair index, responder index)
    checks: dict[tuple[int, int], list[bool | None]] = {}
    checked_out: set[int] = set()  # pairs with an answer that a code check rejected
    for p, (it, j) in enumerate(pairs):
        for i, g in responders:
            r = answers[i][p]
            if isinstance(r, GenError):
                failures.append(_failure("respond", it, r.reason, g.name, input_index=j))
            elif r.truncated:  # half an answer is not a training row
                failures.append(_failure("respond", it, f"the answer was cut off at max_tokens={cfg.response_max_tokens}",
                                         g.name, input_index=j))
            elif cfg.check and it.node.state.constraints:
                results = check_constraints([c.text for c in it.node.state.constraints], r.text, it.instruction)
                checks[(p, i)] = [c.passed for c in results]
                broken = [c for c in results if c.passed is False]
                if broken:  # code can tell: no need to ask the judge
                    checked_out.add(p)
                    failures.append(_failure("check", it, "; ".join(f"violates '{c.constraint}' ({c.reason})" for c in broken),
                                             g.name, input_index=j))
                else:
                    todo.append((p, i))
            else:
                todo.append((p, i))
    tick = stage("judge answers", len(todo))
    verdicts = judge_answers(roles["judge"], cfg.judge_mode,
                             [(texts[p][0], texts[p][1], answers[i][p].text) for p, i in todo], min_mass=cfg.min_choice_mass)
    tick(len(todo))
    by_pair: dict[int, list[tuple[int, Judged]]] = {}
    for (p, i), v in zip(todo, verdicts):
        if isinstance(v, GenError):
            it, j = pairs[p]
            failures.append(_failure("judge_answer", it, v.reason, roles["judge"].name, input_index=j, responder=roles[f"responder_{i}"].name))
        else:
            by_pair.setdefault(p, []).append((i, v))
    rows = []
    for p, (it, j) in enumerate(pairs):
        best = best_answer(by_pair.get(p, []))
        if best is None:
            status = "check_failed" if p in checked_out and not by_pair.get(p) else "unanswered"
            rows.append({"_pair": p, "_status": status, "_item": it, "input_index": j})
            continue
        i, v = best
        status = "kept" if cfg.min_response_score is None or v.mean >= cfg.min_response_score else "below_floor"
        rows.append({"_pair": p, "_status": status, "_item": it, "input_index": j, "responder": i, "judged": v,
                     "response": answers[i][p].text, "candidates": [(k, w.mean) for k, w in by_pair[p]],
                     "checks": checks.get((p, i))})
        if status == "kept":
            it.kept_rows += 1
    return rows


# -- outputs -----------------------------------------------------------------------------
def _failure(stage: str, it: Item, reason: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"stage": stage, "seed": it.seed_index, "state_hash": it.node.state_hash, "hop": it.node.hop,
            "model": model, **extra, "reason": reason}


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

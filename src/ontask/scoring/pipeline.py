"""`ontask score`: stream a dataset through the scorer and write it back with scores.

Three streaming passes over the input, so memory stays flat however long the file is:
1. collect the distinct instructions (only if TSS needs alternatives) and, for `hard`
   alternatives, embed them and find each one's nearest neighbours;
2. score rows chunk by chunk: plan each row's passes, look them up in the cache, run the
   missing ones in one length-sorted batched call whose every forward batch (or server
   answer) is committed to the cache the moment it is done, and spool the row's raw scores
   to disk. A batch is the unit of resume: a killed run loses at most the batch in flight;
3. join the input with the spool, finish dataset-level scores (TSS++ z-scores) and write
   the output atomically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..runs import RunPaths, versions
from ..models.base import PassOutcome, PassRequest, PassResult, Scorer
from ..cache import ResultCache
from ..io import AtomicWriter, JsonlAppender, write_json_atomic
from ..records import Example, Failure
from . import scores as S
from .alternatives import InstructionPool, hard_neighbours, random_alternatives
from .config import ScoreConfig
from .plan import RowFailed, RowPlan, pass_key, plan_row, row_scores

Progress = Callable[[int, int, int], None]  # (rows just done, passes just done, tokens computed so far)


class BudgetReached(Exception):
    """The run spent its `max_tokens_spent` or `max_cost`; what it computed is committed."""


class Meter:
    """What a run has spent, updated at every commit: tokens, cost, and the budget check.

    Raising `BudgetReached` from a commit stops the scorer between batches: everything
    reported before is in the cache, so a rerun with a larger budget resumes there."""

    def __init__(self, cfg: ScoreConfig, progress: Progress | None) -> None:
        self.progress = progress
        self.max_tokens, self.max_cost = cfg.max_tokens_spent, cfg.max_cost
        self.price = cfg.spec_for("scorer")
        self.tokens = 0

    @property
    def cost(self) -> float | None:
        return self.price.cost(self.tokens)  # None when the scorer's spec gives no price

    def add(self, rows: int, passes: int, tokens: int) -> None:
        self.tokens += tokens
        if self.progress:
            self.progress(rows, passes, self.tokens)
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            raise BudgetReached(f"spent {self.tokens:,} tokens, the --max-tokens-spent budget of {self.max_tokens:,}")
        cost = self.cost
        if self.max_cost is not None and cost is not None and cost >= self.max_cost:
            raise BudgetReached(f"spent ${cost:.4f}, the --max-cost budget of ${self.max_cost:g}")


def chunks(items: Iterator[list[Example | Failure]], size: int) -> Iterator[list[tuple[int, Example | Failure]]]:
    """Re-chunk the reader's output to `size` items, numbering every item in order."""
    seq, buf = 0, []
    for chunk in items:
        for item in chunk:
            buf.append((seq, item))
            seq += 1
            if len(buf) == size:
                yield buf
                buf = []
    if buf:
        yield buf


@dataclass
class ChunkResult:
    """What scoring a chunk produced: spool lines (in row order), failures, TSS++ terms."""

    lines: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    tss_pp_terms: list[tuple[float, float]] = field(default_factory=list)


class ChunkSink:
    """Where chunk results go, in input order: the spool (row scores) and failed.jsonl.

    Failures go to a partial file, swapped in with the output, so a run that stops early
    leaves the previous output, run.json and failed.jsonl consistent.
    """

    def __init__(self, run: RunPaths) -> None:
        self.run = run
        self.tss_stats, self.q_stats = S.RunningStats(), S.RunningStats()

    def __enter__(self) -> "ChunkSink":
        self.run.failed_partial.unlink(missing_ok=True)
        self._failed = JsonlAppender(self.run.failed_partial).__enter__()
        self._spool = open(self.run.spool, "w", encoding="utf-8")
        return self

    def add(self, result: ChunkResult) -> None:
        for failure in result.failures:
            self._failed.write(failure)
        for tss_hard, q in result.tss_pp_terms:
            self.tss_stats.add(tss_hard)
            self.q_stats.add(q)
        if result.lines:
            self._spool.write("\n".join(result.lines) + "\n")

    def __exit__(self, *exc: object) -> None:
        self._spool.close()
        self._failed.__exit__(*exc)


class Scoring:
    """One scoring run over one input file."""

    def __init__(self, cfg: ScoreConfig, scorer: Scorer, cache: ResultCache, embedder: Any = None,
                 variants: Any = None) -> None:
        self.cfg, self.scorer, self.cache, self.embedder = cfg, scorer, cache, embedder
        self.variant_maker = variants  # tcia.variants.VariantMaker, for `variants` alternatives
        self.pool = InstructionPool()
        self.hard: list[list[int]] = []
        self.variant_sets: list[Any] = []  # VariantSet per pool index
        self.pool_states: list[Any] = []  # the decomposition a row carried, per pool index
        self.counts = {"rows_read": 0, "rows_scored": 0, "rows_failed": 0,
                       "passes_needed": 0, "passes_cached": 0, "passes_computed": 0, "pass_errors": 0}
        self.timings: dict[str, float] = {}
        self.meter = Meter(cfg, None)

    @property
    def tokens_computed(self) -> int:
        return self.meter.tokens

    @tokens_computed.setter
    def tokens_computed(self, value: int) -> None:  # the Ray driver adds what its actors computed
        self.meter.tokens = value

    # -- phase 1 ----------------------------------------------------------------------
    def build_alternatives(self, path: Path) -> None:
        kinds = self.cfg.alternative_kinds
        if not kinds:
            return
        t = time.perf_counter()
        for chunk in self.cfg.rows(path):
            for item in chunk:
                if isinstance(item, Example):
                    before = len(self.pool)
                    self.pool.add(item.instruction)
                    if "variants" in kinds and len(self.pool) > before:
                        from ..tcia.variants import state_from_row

                        self.pool_states.append(state_from_row(item.fields))
        if "random" in kinds and len(self.pool) - 1 < self.cfg.k:
            raise ValueError(
                f"{path}: random alternatives need at least k+1={self.cfg.k + 1} distinct instructions, "
                f"found {len(self.pool)}; lower -k"
            )
        if "hard" in kinds:
            if self.embedder is None:
                raise ValueError("hard alternatives need an embedder")
            emb = self.embedder.embed(self.pool.texts)
            self.hard = hard_neighbours(emb, self.cfg.hard_count, self.cfg.near_duplicate)
        if "variants" in kinds:
            if self.variant_maker is None:
                raise ValueError("variants alternatives need a VariantMaker (decomposer, composer, verifier)")
            self.variant_sets = self.variant_maker.build(self.pool.texts, self.pool_states)
            self.counts.update(_variant_counts(self.variant_sets))
        self.timings["alternatives_s"] = round(time.perf_counter() - t, 3)

    def _alternatives_for(self, seq: int, ex: Example) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        if not self.cfg.alternative_kinds:
            return out
        idx = self.pool.index[ex.instruction]
        for kind in self.cfg.alternative_kinds:
            if kind == "variants":
                out[kind] = self.variant_sets[idx].texts(self.cfg.k)
                continue
            if kind == "random":
                picks = random_alternatives(len(self.pool), idx, self.cfg.k, self.cfg.seed, seq)
            else:
                picks = self.hard[idx]
            out[kind] = [self.pool.texts[p] for p in picks]
        return out

    def _variants_for(self, ex: Example) -> Any:
        return self.variant_sets[self.pool.index[ex.instruction]] if self.variant_sets else None

    # -- phase 2 ----------------------------------------------------------------------
    def run_passes(self, plans: list[RowPlan]) -> dict[PassRequest, PassOutcome]:
        """All passes of a chunk: cached ones looked up, the rest computed, each forward batch
        committed to the cache as soon as it is done (the unit of resume)."""
        fp = self.scorer.fingerprint
        keyed: dict[str, PassRequest] = {}
        for plan in plans:
            for req in plan.requests():
                keyed.setdefault(pass_key(fp, req), req)
        found = self.cache.get_many(list(keyed))
        results: dict[PassRequest, PassOutcome] = {}
        for key, blob in found.items():
            s, n, p = json.loads(blob)
            results[keyed[key]] = PassResult(s, n, p)
        self.counts["passes_needed"] += len(keyed)
        self.counts["passes_cached"] += len(found)
        self.meter.add(0, len(found), 0)
        todo = [k for k in keyed if k not in found]

        def commit(done: list[tuple[int, PassOutcome]]) -> None:
            fresh = [(todo[i], o) for i, o in done]
            self.cache.put_many("pass", ((k, json.dumps([o.sum_logprob, o.n_output, o.n_prompt]).encode())
                                         for k, o in fresh if isinstance(o, PassResult)))
            for k, o in fresh:
                results[keyed[k]] = o
            self.counts["passes_computed"] += len(fresh)
            self.counts["pass_errors"] += sum(not isinstance(o, PassResult) for _, o in fresh)
            self.meter.add(0, len(fresh), sum(o.n_prompt + o.n_output for _, o in fresh if isinstance(o, PassResult)))

        if todo:
            self.scorer.score([keyed[k] for k in todo], on_results=commit)
        return results

    def score_chunk(self, chunk: list[tuple[int, Example | Failure]]) -> "ChunkResult":
        """Plan, compute (or look up) and score one chunk of numbered rows: the unit of work
        of both engines (the local loop and a Ray actor), so both compute the same floats."""
        out = ChunkResult()
        plans: list[RowPlan] = []
        for seq, item in chunk:
            if isinstance(item, Failure):
                out.failures.append(item.to_json())
                self.counts["rows_failed"] += 1
                continue
            self.counts["rows_read"] += 1
            plans.append(plan_row(seq, item, self.cfg, self._alternatives_for(seq, item), self._variants_for(item)))
        results = self.run_passes(plans)
        for plan in plans:
            try:
                row = row_scores(plan, results, self.cfg)
            except RowFailed as err:
                out.failures.append(Failure(plan.example.loc, err.reason, stage="score").to_json())
                self.counts["rows_failed"] += 1
                out.lines.append(json.dumps({"seq": plan.seq, "failed": err.reason}))
                continue
            if "tss++" in self.cfg.metrics:
                out.tss_pp_terms.append((row["tss_hard"], row["_q"]))
            self.counts["rows_scored"] += 1
            out.lines.append(json.dumps({"seq": plan.seq, "scores": row}))
        return out

    def score_all(self, path: Path, run: RunPaths, progress: Progress | None) -> tuple[S.RunningStats, S.RunningStats]:
        self.meter.progress = progress
        with ChunkSink(run) as sink:
            for chunk in chunks(self.cfg.rows(path), self.cfg.chunk_rows):
                sink.add(self.score_chunk(chunk))
                self.meter.add(len(chunk), 0, 0)
        return sink.tss_stats, sink.q_stats

    # -- phase 3 ----------------------------------------------------------------------
    def write_output(self, path: Path, run: RunPaths, tss_stats: S.RunningStats, q_stats: S.RunningStats) -> None:
        cfg = self.cfg
        with open(run.spool, encoding="utf-8") as spool, AtomicWriter(run.output) as writer:
            for chunk in chunks(cfg.rows(path), 1024):
                rows = []
                for seq, item in chunk:
                    if isinstance(item, Failure):
                        continue
                    entry = json.loads(spool.readline())
                    if entry["seq"] != seq:
                        raise RuntimeError(f"{path} changed while it was being scored (row {seq})")
                    if "failed" in entry:
                        continue
                    scores = entry["scores"]
                    q = scores.pop("_q", None)
                    if "tss++" in cfg.metrics:
                        scores["tss_pp"] = S.tss_pp(tss_stats.z(scores["tss_hard"]), q_stats.z(q), cfg.lam)
                        if cfg.alternatives == "hard" and "tss" in cfg.metrics:
                            scores.pop("tss_hard")
                    rows.append({**item.fields, **scores})
                writer.write(rows)


def _variant_counts(sets: list[Any]) -> dict[str, int]:
    variants = [v for vs in sets for v in vs.variants]
    return {"variant_instructions": len(sets),
            "variant_instructions_without": sum(1 for vs in sets if not vs.texts(1)),
            "variants_cut": sum(1 for v in variants if v.text and v.method == "cut"),
            "variants_composed": sum(1 for v in variants if v.text and v.method == "composed"),
            "variants_failed": sum(1 for v in variants if not v.text)}


Executor = Callable[["Scoring", Path, RunPaths, "Progress | None"], tuple[Any, Any, dict[str, Any]]]


def score_locally(job: "Scoring", path: Path, run: RunPaths, progress: "Progress | None") -> tuple[Any, Any, dict[str, Any]]:
    """The local executor: every chunk in this process; returns the TSS++ running stats and
    the engine's facts (with the scorer's identity under "scorer")."""
    if job.scorer is None:
        raise ValueError("the local engine needs a scorer")
    tss_stats, q_stats = job.score_all(path, run, progress)
    return tss_stats, q_stats, {"engine": "local", "scorer": job.scorer.describe()}


def run_score(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    cfg: ScoreConfig,
    *,
    scorer: Scorer | None,
    cache: ResultCache,
    embedder: Any = None,
    variants: Any = None,
    progress: Progress | None = None,
    executor: "Executor | None" = None,
) -> dict[str, Any]:
    """Score `input_path` into `output`; returns the manifest also written to run.json.

    `executor` runs phase 2 (the passes) and is chosen by the caller (`ontask.api`): by
    default `score_locally`; the Ray engine's runs them in actors that load the scorer
    themselves (`scorer` may then be None: the driver needs no model); the output is the same.

    `variants` (a tcia.variants.VariantMaker) is needed for `--alternatives variants`;
    the variants of every distinct instruction are written to variants.jsonl beside the output.
    """
    path = Path(input_path)
    run = RunPaths.at(output)
    job = Scoring(cfg, scorer, cache, embedder, variants)
    started = time.time()
    t = time.perf_counter()
    try:
        job.build_alternatives(path)
        if job.variant_sets:
            with AtomicWriter(run.dir / "variants.jsonl") as w:
                w.write([{"instruction": text, **vs.to_json()} for text, vs in zip(job.pool.texts, job.variant_sets)])
        t2 = time.perf_counter()
        tss_stats, q_stats, engine = (executor or score_locally)(job, path, run, progress)
        described = engine.pop("scorer", None) or (scorer.describe() if scorer is not None else {"name": cfg.scorer})
        t3 = time.perf_counter()
        job.write_output(path, run, tss_stats, q_stats)
        run.failed_partial.replace(run.failed)
    finally:
        run.spool.unlink(missing_ok=True)
    t4 = time.perf_counter()
    job.timings.update(score_s=round(t3 - t2, 3), write_s=round(t4 - t3, 3), total_s=round(t4 - t, 3))
    manifest = {
        "command": "score",
        "input": str(path),
        "output": str(run.output),
        "failed": str(run.failed),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "config": cfg.model_dump(),
        "scorer": described,
        "engine": engine,
        "embedder": getattr(embedder, "name", None),
        "variants": variants.describe() if variants is not None and job.variant_sets else None,
        "versions": versions(),
        "counts": job.counts,
        "tokens_computed": job.tokens_computed,
        "tokens_per_s": round(job.tokens_computed / (t3 - t2), 1) if t3 > t2 else None,
        "passes_per_s": round(job.counts["passes_computed"] / (t3 - t2), 2) if t3 > t2 else None,
        "cost_usd": job.meter.cost,
        "timings": job.timings,
        "cache": cache.stats(),
        "tss_pp_stats": (
            {"tss_hard_mean": tss_stats.mean, "tss_hard_std": tss_stats.std, "q_mean": q_stats.mean, "q_std": q_stats.std}
            if "tss++" in cfg.metrics else None
        ),
        "tss_pp_definition": (
            {"definition": cfg.tss_pp_definition(), "hard_pick": cfg.hard_pick, "hard_pool": cfg.hard_count,
             "k": cfg.k, "quality": cfg.quality, "lam": cfg.lam} if "tss++" in cfg.metrics else None
        ),
    }
    write_json_atomic(run.manifest, manifest)
    return manifest

"""`ontask score --dry-run`: what a run will do before it does it.

Counts are exact, not guessed: every row is planned as the run will plan it (the same
alternatives, the same pass keys, the same per-chunk deduplication), the cache is asked
which passes are already known, and the passes still to compute are tokenised with the
scorer's own tokenizer and template. Time comes from a short calibration on the chosen
model: the passes of a few rows drawn at random (seeded) are scored for real and
committed to the cache, so the run that follows reuses them and nothing is computed
twice; their measured tokens/s times the tokens left gives the scoring time. Cost is
tokens times the scorer's price when the settings give one (none is built in).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from ..records import Failure
from .pipeline import Scoring, chunks
from .plan import RowPlan, pass_key, plan_row


def estimate_run(job: Scoring, path: Path, *, calibrate_rows: int = 24) -> dict[str, Any]:
    """Plan every row of `path`, count passes and tokens to compute, calibrate, predict.

    The calibration scores the uncached passes of `calibrate_rows` rows drawn at random (at
    most a tenth of the rows, at least one: a dry run of a small file must not do the whole
    job, nor spend a priced model's budget): enough forward batches that one slow first call
    does not dominate, few enough to take seconds; they are committed, so they are not a
    cost the run pays again."""
    cfg, scorer = job.cfg, job.scorer
    t0 = time.perf_counter()
    job.build_alternatives(path)
    fp = scorer.fingerprint
    seen: set[int] = set()  # pass keys already counted (as the run finds them cached by a later chunk)
    rows = failed = needed = cached = to_compute = tokens = 0
    rng, sample = random.Random(cfg.seed), []
    for chunk in chunks(cfg.rows(path), cfg.chunk_rows):
        plans: list[RowPlan] = []
        for seq, item in chunk:
            if isinstance(item, Failure):
                failed += 1
                continue
            plans.append(plan_row(seq, item, cfg, job._alternatives_for(seq, item), job._variants_for(item)))
            rows += 1
            if len(sample) < calibrate_rows:  # reservoir: a uniform draw of rows, in one read
                sample.append(plans[-1])
            elif (j := rng.randrange(rows)) < calibrate_rows:
                sample[j] = plans[-1]
        keyed = {pass_key(fp, r): r for p in plans for r in p.requests()}
        found = job.cache.get_many(list(keyed))
        needed += len(keyed)
        for key, req in keyed.items():
            short = int(key[:16], 16)
            if key in found or short in seen:
                cached += 1
                continue
            seen.add(short)
            to_compute += 1
            tokens += scorer.count_tokens(scorer.render_prompt(req.user) + req.output)
    plan_s = time.perf_counter() - t0
    sample = rng.sample(sample, min(len(sample), max(1, rows // 10)))

    t1 = time.perf_counter()
    job.run_passes(sample)  # computed for real and committed: the run reuses them
    calib_s = time.perf_counter() - t1
    calib_passes, calib_tokens = job.counts["passes_computed"], job.tokens_computed
    rate = calib_tokens / calib_s if calib_tokens and calib_s > 0 else None
    left = max(0, tokens - calib_tokens)
    score_s = left / rate if rate else None
    price = cfg.spec_for("scorer")
    return {
        "rows": rows, "rows_failed_to_read": failed,
        "passes_per_row": cfg.passes_per_row,
        "passes_needed": needed, "passes_cached": cached, "passes_to_compute": to_compute,
        "tokens_to_compute": tokens,
        "calibration": {"rows": len(sample), "passes": calib_passes, "tokens": calib_tokens,
                        "seconds": round(calib_s, 3), "tokens_per_s": round(rate, 1) if rate else None},
        "plan_s": round(plan_s, 3),
        "estimated_score_s": round(score_s, 1) if score_s is not None else None,
        "estimated_cost_usd": price.cost(tokens),
        "calibration_cost_usd": price.cost(calib_tokens),
    }

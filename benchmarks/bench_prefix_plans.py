#!/usr/bin/env python
"""The scorer's two batch plans on the same passes, in one process, alternating.

`ontask score` end to end (`run_score`, fresh cache each run, TSS k=4 + IFD, the passes
`bench_scoring.py` plans) on the embedded scorer's fused CPU forward:
- previous plan (what `share_prefix: false` selects): passes sorted by length, padded
  batches of 2048 tokens, a prefix common to the whole batch (the chat header) run once;
- shared prefixes: passes sorted by their tokens, packed batches of 1024 distinct tokens,
  every prefix shared inside a batch (header, header + instruction) run once.
Runs alternate, so both plans see the same machine state (this VM's speed drifts).

    .venv/bin/python benchmarks/bench_prefix_plans.py --rows 100 --repeat 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scoring as B  # noqa: E402

from ontask.models.hf.scorer import FUSED_BATCH_TOKENS  # noqa: E402

PLANS = {"previous (header only, padded, 2048)": (False, 2048),
         f"shared prefixes, packed, {FUSED_BATCH_TOKENS}": (True, FUSED_BATCH_TOKENS)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    if not (B.DEFAULT_DATA / B.DATA_FILES[0]).exists():
        print(f"skipped: {B.DEFAULT_DATA} not found")
        return 0
    from ontask.models.embedded.weights import load_embedded_scorer
    from ontask.scoring.config import ScoreConfig

    scorer = load_embedded_scorer()
    path = Path(tempfile.mkdtemp(prefix="bench-plans-")) / "rows.jsonl"
    B.write_alpaca(B.load_examples(B.DEFAULT_DATA, args.rows), path)
    cfg = ScoreConfig(metrics=["ifd", "tss"], alternatives="random", k=4)
    requests = [r for c in B.plan_requests(path, cfg, scorer) for r in c]
    scorer.score(requests[:4])  # warm-up
    print(f"machine: {B.cpu_model()}; {args.rows} rows, {len(requests)} passes")
    rows = []
    for rep in range(args.repeat):
        for name, (share, budget) in PLANS.items():
            scorer.share_prefix, scorer.batch_tokens = share, budget
            before = scorer.stats["computed"]
            run = B.run_ontask(path, cfg, scorer, requests, 1)
            tokens = run["manifest"]["tokens_computed"]
            rows.append([str(rep + 1), name, f"{run['seconds']:.1f}", f"{tokens / run['seconds']:.0f}",
                         str(scorer.stats["computed"] - before)])
            print(" | ".join(rows[-1]), flush=True)
    print(B.fmt_table(["run", "plan", "seconds", "tokens/s", "tokens run through the body"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

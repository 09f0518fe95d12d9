"""Scoring on Ray: N local workers against the local engine, same rows, same scorer.

Rows: the first N examples of the Self-Instruct user-oriented set (../shared/data). Each
engine scores them from an empty cache with ScoreConfig(metrics ppl, ifd, tss; k=4,
random alternatives), the embedded SmolLM2-135M scorer by default:

- local: one process, torch on every core (the default `ontask score`);
- ray: `--engine ray --workers W` on a local Ray started by the run, one scorer per actor,
  one core each. Both use `--chunk-rows` (16) rows per unit of work: Ray hands whole
  chunks to actors, so a run needs many more chunks than workers. The wall time includes starting Ray and loading W models; the table
  also shows the scoring time alone (the streaming phase, run.json `timings.score_s`).

Then the outputs are compared: rows, and the largest absolute difference of any score
(0 when the thread counts match; torch sums in a thread-count-dependent order otherwise).

    .venv/bin/python benchmarks/bench_ray_scoring.py --rows 200 --workers 2
    .venv/bin/python benchmarks/bench_ray_scoring.py --rows 100 --scorer hf:/models/x
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "user_oriented_dev.jsonl"
SCORES = ("lp", "lp_empty", "ppl", "ifd", "tss")


def write_rows(path: Path, n: int) -> int:
    from ontask.io import read_examples
    from ontask.records import Example

    rows = []
    for chunk in read_examples(DATA):
        rows += [{"instruction": e.instruction, "input": e.input, "output": e.output}
                 for e in chunk if isinstance(e, Example)]
        if len(rows) >= n:
            break
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]), encoding="utf-8")
    return min(n, len(rows))


def score(src: Path, out: Path, scorer: str, chunk_rows: int, extra: list[str]) -> tuple[float, dict]:
    config = out.parent / "score.yaml"
    config.write_text(f"score:\n  chunk_rows: {chunk_rows}\n")
    cmd = [sys.executable, "-c", "from ontask.cli.main import app; app()", "score", str(src), "-o", str(out),
           "--scorer", scorer, "--metrics", "ppl,ifd,tss", "-k", "4", "--cache", str(out.parent / f"{out.name}.sqlite"),
           "--config", str(config), *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, json.loads((out / "run.json").read_text())


def max_diff(a: Path, b: Path) -> tuple[int, float]:
    ra = [json.loads(x) for x in (a / "data.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (b / "data.jsonl").read_text().splitlines()]
    assert len(ra) == len(rb), (len(ra), len(rb))
    diff = max((abs(x[k] - y[k]) for x, y in zip(ra, rb) for k in SCORES if k in x and math.isfinite(x[k])), default=0.0)
    return len(ra), diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scorer", default="embedded")
    ap.add_argument("--chunk-rows", type=int, default=16,
                    help="rows per unit of work, both engines (Ray shares whole chunks: have many more than workers)")
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "rows.jsonl"
        n = write_rows(src, args.rows)
        runs = {"local": score(src, Path(tmp) / "local", args.scorer, args.chunk_rows, []),
                f"ray x{args.workers}": score(src, Path(tmp) / "ray", args.scorer, args.chunk_rows,
                                              ["--engine", "ray", "--workers", str(args.workers)])}
        rows, diff = max_diff(Path(tmp) / "local", Path(tmp) / "ray")
    print()
    print("| engine | rows | passes | tokens | wall s | scoring s | rows/s (scoring) | tokens/s (scoring) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (wall, m) in runs.items():
        s = m["timings"]["score_s"]
        print(f"| {name} | {m['counts']['rows_scored']} | {m['counts']['passes_computed']} | {m['tokens_computed']} | "
              f"{wall:.1f} | {s:.1f} | {m['counts']['rows_scored'] / s:.2f} | {m['tokens_computed'] / s:,.0f} |")
    print(f"\n{rows} rows compared (of {n}); largest absolute score difference local vs ray: {diff:.2e}")


if __name__ == "__main__":
    main()

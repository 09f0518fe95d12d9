"""Peak RSS of `ontask score` on generated rows with a tiny model: 1k rows vs 100k rows.

Each size runs in its own process (`os.wait4` gives that child's own peak RSS), with its
own fresh cache, so the numbers are comparable. Memory must stay flat: the scorer streams
rows in chunks, spools per-row scores to disk and keeps only the distinct-instruction
pool (for random alternatives) in memory.

    .venv/bin/python benchmarks/bench_memory.py --sizes 1000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "budget hiring launch meeting customer refund order delivery invoice schedule team report".split()


def write_rows(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
            f.write(json.dumps({"id": i, "instruction": f"Task {i}: summarise the {words(3)} notes.",
                                "input": words(rng.randint(5, 20)), "output": words(rng.randint(5, 25))}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 100000])
    ap.add_argument("--metrics", default="ppl,ifd,tss")
    ap.add_argument("-k", type=int, default=2)
    args = ap.parse_args()
    from ontask.testing.tiny import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="ontask-mem-"))
    model = make_tiny_model(work / "tiny")
    rows = []
    for n in args.sizes:
        src = work / f"rows{n}.jsonl"
        write_rows(src, n)
        cmd = [sys.executable, "-c", "from ontask.cli.main import app; app()", "score", str(src),
               "-o", str(work / f"out{n}"), "--scorer", f"hf:{model}", "--metrics", args.metrics,
               "-k", str(args.k), "--cache", str(work / f"cache{n}.sqlite")]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        dt = time.perf_counter() - t
        if status != 0:
            sys.exit(f"score failed for {n} rows (status {status})")
        manifest = json.loads((work / f"out{n}" / "run.json").read_text())
        rows.append((n, usage.ru_maxrss / 1024, dt, manifest["counts"]["passes_computed"]))
    base = rows[0][1]
    print(f"\n{'rows':>8} {'peak RSS MiB':>13} {'x vs first':>10} {'seconds':>8} {'passes':>8}")
    for n, rss, dt, passes in rows:
        print(f"{n:>8} {rss:>13.1f} {rss / base:>10.3f} {dt:>8.1f} {passes:>8}")
    print(f"\nwork dir: {work}")


if __name__ == "__main__":
    main()

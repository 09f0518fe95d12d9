"""Does `--stratify` keep every group at its budget where plain TSS selection starves some?

Acceptance check for stratified selection on real grouped rows. Each dataset is scored on
its own (the random alternative instructions of TSS come from the same dataset) with the
embedded scorer (SmolLM2-135M-Instruct), TSS with k=4, then selected twice at the same
`--retain` budget: plain TSS, and TSS with `--stratify COLUMN`. Printed per dataset: each
group, its rows, its share of the budget (retain x rows), the rows kept plain and
stratified, and its mean TSS; then what select.json's baselines (random, length) keep at
the plain selection's budget; for Dolly, the mean TSS of rows with and without a context.

- ../shared/data/user_oriented_dev.jsonl grouped by motivation_app (Self-Instruct layout)
- ../shared/data/seed_tasks.jsonl grouped by is_classification (Self-Instruct layout)
- benchmarks/data/dolly_sample.jsonl grouped by category (Dolly layout)

    .venv/bin/python benchmarks/bench_stratify.py                # every row of the three
    .venv/bin/python benchmarks/bench_stratify.py --rows 40      # the first 40 of each, quicker
    .venv/bin/python benchmarks/bench_stratify.py --tokens       # a token budget: 25% of the tokens

A row budget gives every group at least one row (half-up rounding, never zero), so with
many small groups (57 apps over 126 rows) the stratified selection keeps more rows than
the plain one (58 against 32 at 0.25). A token budget has no such floor: a group whose
part of the tokens (split by its share of the rows) is below the cost of its best row
keeps nothing, and what a group leaves unspent is not passed on (same data, --tokens: 39
of the 57 apps keep no row, and 1,894 of the 5,336 tokens are spent).

Scores are cached in --cache (default: a fresh file in a temporary folder, so the timings
are of a cold run); a rerun with the same --cache costs only the selections. Cold, on 2
CPU cores: every row (466) 7 min 54 s, --rows 40 1 min 43 s (2026-12-07).
"""

# Dolly rows: 165 rows of databricks-dolly-15k (CC BY-SA 3.0), copied from the public copy
# github.com/yogarajjsoshua/FlaskApplication, file databricks-dolly-15k.jsonl (see
# benchmarks/data/README.md for which parts of it).

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    column: str


DATASETS = (
    Dataset("user_oriented_dev", SHARED / "user_oriented_dev.jsonl", "motivation_app"),
    Dataset("seed_tasks", SHARED / "seed_tasks.jsonl", "is_classification"),
    Dataset("dolly_sample", ROOT / "benchmarks" / "data" / "dolly_sample.jsonl", "category"),
)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def group_of(row: dict[str, Any], column: str) -> str:
    """The group name as `ontask select --stratify` spells it (a bool reads True / False)."""
    value = row.get(column)
    return "(missing)" if value is None else str(value)


def score(ds: Dataset, out: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """Score `ds` with TSS (k random alternatives from the same file); the output path and seconds."""
    import ontask

    t0 = time.perf_counter()
    ontask.score(str(ds.path), output=out, cache=args.cache, progress=False, metrics=["tss"], k=args.k,
                 limit=args.rows)
    return out, time.perf_counter() - t0


def budget(scored_rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """`--retain R`, or with --tokens the same share of the scored rows' tokens (`--max-tokens`)."""
    if not args.tokens:
        return {"retain": args.retain}
    return {"max_tokens": max(1, round(args.retain * sum(int(r["tokens"]) for r in scored_rows)))}


def select(scored: Path, out: Path, limits: dict[str, Any], stratify: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Select by TSS under `limits`, stratified or not; the kept rows and select.json's content."""
    import ontask

    res = ontask.select(str(scored), output=out, by="tss", stratify=stratify, **limits)
    return read_jsonl(out), res.manifest


def counts(rows: list[dict[str, Any]], column: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        g = group_of(row, column)
        out[g] = out.get(g, 0) + 1
    return out


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def group_table(ds: Dataset, scored_rows: list[dict[str, Any]], plain: dict[str, int], strat: dict[str, int],
                retain: float) -> list[tuple[str, int, float, int, int, float]]:
    """(group, rows, share of the budget in rows, kept plain, kept stratified, mean TSS), best mean first."""
    tss: dict[str, list[float]] = {}
    for row in scored_rows:
        tss.setdefault(group_of(row, ds.column), []).append(float(row["tss"]))
    table = [(g, len(v), retain * len(v), plain.get(g, 0), strat.get(g, 0), mean(v)) for g, v in tss.items()]
    return sorted(table, key=lambda r: -r[5])


def print_table(ds: Dataset, table: list[tuple[str, int, float, int, int, float]], scored_rows: list[dict[str, Any]]) -> None:
    width = max(12, *(len(r[0]) for r in table))
    print(f"\n{ds.name} ({len(scored_rows)} scored rows) grouped by {ds.column}: {len(table)} groups")
    print(f"  {'group':<{width}}  {'rows':>5}  {'share':>6}  {'plain':>5}  {'strat':>5}  {'mean tss':>9}")
    for g, n, share, p, s, m in table:
        print(f"  {g:<{width}}  {n:>5}  {share:>6.2f}  {p:>5}  {s:>5}  {m:>9.4f}")
    n = sum(r[1] for r in table)
    print(f"  {'total':<{width}}  {n:>5}  {sum(r[2] for r in table):>6.2f}  {sum(r[3] for r in table):>5}  "
          f"{sum(r[4] for r in table):>5}  {mean([float(r['tss']) for r in scored_rows]):>9.4f}")


def summarise(table: list[tuple[str, int, float, int, int, float]]) -> str:
    """How many groups each selection leaves empty, or below half of their share."""
    parts = []
    for name, col in (("plain", 3), ("stratified", 4)):
        empty = sum(1 for r in table if r[col] == 0)
        under = sum(1 for r in table if r[col] < 0.5 * r[2])
        parts.append(f"{name}: {empty} groups with no row kept, {under} below half their share")
    return "; ".join(parts)


def print_baselines(manifest: dict[str, Any]) -> None:
    for name, b in (manifest.get("baselines") or {}).items():
        print(f"  baseline {name:<6}: kept {b['kept']}, mean tss {b['mean_score']:.4f} vs the selection's "
              f"{b['selection_mean_score']:.4f}, overlap {b['overlap']:.2f} ({b['common']} rows in common)")


def context_effect(scored_rows: list[dict[str, Any]]) -> str:
    """Mean TSS of Dolly rows with a non-empty context against rows without one."""
    with_ctx = [float(r["tss"]) for r in scored_rows if str(r.get("context") or "").strip()]
    without = [float(r["tss"]) for r in scored_rows if not str(r.get("context") or "").strip()]
    return (f"  context effect: mean tss {mean(with_ctx):.4f} over {len(with_ctx)} rows with a context, "
            f"{mean(without):.4f} over {len(without)} rows without (difference {mean(with_ctx) - mean(without):+.4f})")


def run(ds: Dataset, work: Path, args: argparse.Namespace) -> None:
    if not ds.path.is_file():
        print(f"\n{ds.name}: skipped, {ds.path} is absent")
        return
    scored, seconds = score(ds, work / ds.name / "scored.jsonl", args)
    scored_rows = read_jsonl(scored)
    limits = budget(scored_rows, args)
    plain_rows, plain_manifest = select(scored, work / ds.name / "plain.jsonl", limits, None)
    strat_rows, strat_manifest = select(scored, work / ds.name / "strat.jsonl", limits, ds.column)
    assert strat_manifest["groups"] is not None
    table = group_table(ds, scored_rows, counts(plain_rows, ds.column), counts(strat_rows, ds.column), args.retain)
    print_table(ds, table, scored_rows)
    tokens = {name: sum(int(r["tokens"]) for r in rows) for name, rows in (("plain", plain_rows), ("strat", strat_rows))}
    flag = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in limits.items())
    print(f"  scored in {seconds:.0f} s; {flag}: plain keeps {len(plain_rows)} rows ({tokens['plain']} tokens), "
          f"stratified keeps {len(strat_rows)} rows ({tokens['strat']} tokens)")
    print(f"  {summarise(table)}")
    print(f"  mean tss of the kept rows: plain {mean([float(r['tss']) for r in plain_rows]):.4f}, "
          f"stratified {mean([float(r['tss']) for r in strat_rows]):.4f}")
    print(f"  mean output tokens: all rows {mean([float(r['output_tokens']) for r in scored_rows]):.1f}, kept plain "
          f"{mean([float(r['output_tokens']) for r in plain_rows]):.1f}, kept stratified "
          f"{mean([float(r['output_tokens']) for r in strat_rows]):.1f}")
    print_baselines(plain_manifest)
    if ds.name == "dolly_sample":
        print(context_effect(scored_rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="score only the first N rows of each dataset")
    parser.add_argument("--retain", type=float, default=0.25, help="share of rows to keep (default 0.25)")
    parser.add_argument("--tokens", action="store_true", help="a token budget instead: --retain x the scored tokens")
    parser.add_argument("--k", type=int, default=4, help="random alternative instructions per row (default 4)")
    parser.add_argument("--cache", type=Path, default=None, help="result cache file (default: a fresh one)")
    parser.add_argument("--only", default=None, help="comma-separated dataset names to run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ontask-stratify-") as tmp:
        work = Path(tmp)
        if args.cache is None:
            args.cache = work / "cache.sqlite"
        chosen = [d for d in DATASETS if args.only is None or d.name in args.only.split(",")]
        t0 = time.perf_counter()
        for ds in chosen:
            run(ds, work, args)
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

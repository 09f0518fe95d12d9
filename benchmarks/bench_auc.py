"""Does TSS tell a true (instruction, input, output) row from one with a swapped instruction?

Acceptance check for TSS and TSS++ (see the spec, ../shared/spec/tss.md). Every row of
the Self-Instruct seed tasks and the user-oriented dev set is paired with a corrupted copy
whose instruction is another row's (a seeded derangement: never itself, never the same
text), same input and output. One file with both is scored by `run_score` with the
embedded scorer (SmolLM2-135M-Instruct) and embedder, k=4, metrics ppl, ifd, tss, tss++,
and each score's ROC AUC (label 1 = true row) and paired accuracy (share of pairs whose
true row beats its corrupted copy) are reported side by side.

Targets: tss AUC >= 0.80 and tss++ AUC > tss AUC.

    .venv/bin/python benchmarks/bench_auc.py --rows 20      # smoke run
    .venv/bin/python benchmarks/bench_auc.py                # all rows (~600 scored rows)

Passes are cached in --cache (default /tmp/ontask-auc-cache.sqlite), so a rerun, or the
`alternatives="hard"` variant, which reuses the hard passes of tss++, costs nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FILES = ("user_oriented_dev.jsonl", "seed_tasks.jsonl")

# score column -> sign that makes "higher = more likely the true row"
SCORES = {
    "tss": 1.0,
    "tss_pp": 1.0,
    "tss_hard": 1.0,
    "ifd": -1.0,
    "ppl": -1.0,
    "lp": 1.0,
}
LAMBDAS = (0.0, 0.1, 0.3, 1.0)


def load_rows(data_dir: Path, first_instance: bool) -> list[dict]:
    from ontask.io import read_examples
    from ontask.records import Example

    rows: list[dict] = []
    for name in FILES:
        path = data_dir / name
        seen: set[int] = set()
        for chunk in read_examples(path):
            for item in chunk:
                if not isinstance(item, Example):
                    print(f"skipped unreadable row: {item.to_json()}", file=sys.stderr)
                    continue
                if first_instance:
                    if item.loc.line in seen:
                        continue
                    seen.add(item.loc.line)
                rows.append({
                    "instruction": item.instruction,
                    "input": item.input,
                    "output": item.output,
                    "source": f"{name}:{item.loc.line}" + (f" {item.loc.item}" if item.loc.item else ""),
                })
    return rows


def derangement(instructions: list[str], seed: int) -> list[int]:
    """perm[i] != i and instructions[perm[i]] != instructions[i], seeded.

    Sattolo's algorithm gives a uniformly random single cycle (so never a fixed point);
    positions whose donor has the same text are then repaired by swapping donors with a
    random other position where the swap is valid for both.
    """
    n = len(instructions)
    if len(set(instructions)) < 2:
        raise ValueError("need at least two distinct instructions")
    rng = np.random.default_rng(seed)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))
        perm[i], perm[j] = perm[j], perm[i]

    def ok(i: int, donor: int) -> bool:
        return donor != i and instructions[donor] != instructions[i]

    for i in range(n):
        if ok(i, perm[i]):
            continue
        for j in rng.permutation(n):
            j = int(j)
            if j != i and ok(i, perm[j]) and ok(j, perm[i]):
                perm[i], perm[j] = perm[j], perm[i]
                break
        else:
            raise RuntimeError(f"could not find a valid donor for row {i}")
    assert all(ok(i, perm[i]) for i in range(n))
    return perm


def build_pairs(rows: list[dict], seed: int) -> list[dict]:
    perm = derangement([r["instruction"] for r in rows], seed)
    out = []
    for i, r in enumerate(rows):
        out.append({**r, "label": 1, "pair_id": i})
        out.append({**r, "instruction": rows[perm[i]]["instruction"], "label": 0, "pair_id": i,
                    "donor": rows[perm[i]]["source"]})
    return out


def zscores(x: np.ndarray) -> np.ndarray:
    s = x.std()  # population std, as the pipeline's RunningStats
    return (x - x.mean()) / s if s > 0 else np.zeros_like(x)


def evaluate(scored: list[dict], column: str, sign: float) -> dict:
    from sklearn.metrics import roc_auc_score

    have = [r for r in scored if r.get(column) is not None and math.isfinite(r[column])]
    y = np.array([r["label"] for r in have])
    s = sign * np.array([r[column] for r in have], dtype=float)
    auc = float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else float("nan")
    return {"auc": auc, "paired": paired_accuracy(have, column, sign), "n": len(have)}


def paired_accuracy(rows: list[dict], column: str, sign: float) -> tuple[float, int]:
    by_pair: dict[int, dict[int, float]] = {}
    for r in rows:
        by_pair.setdefault(r["pair_id"], {})[r["label"]] = sign * r[column]
    wins, n = 0.0, 0
    for p in by_pair.values():
        if 0 in p and 1 in p:
            n += 1
            wins += 1.0 if p[1] > p[0] else 0.5 if p[1] == p[0] else 0.0
    return (wins / n if n else float("nan"), n)


def auc_of(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=None, help="use only the first N true rows (default: all)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="/tmp/ontask-auc-cache.sqlite")
    ap.add_argument("--out", default="/tmp/ontask-auc")
    ap.add_argument("--data", default=str(DATA), help="folder holding the shared data files")
    ap.add_argument("--first-instance", action=argparse.BooleanOptionalAction, default=True,
                    help="keep only the first instance of each Self-Instruct task (default: on)")
    ap.add_argument("--hard-variant", action=argparse.BooleanOptionalAction, default=True,
                    help="also score tss with alternatives=hard (reuses cached passes)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                    help="the scorer's dtype: bf16 is the lossy mode (AMX / avx512_bf16 on CPU); the cache keeps them apart")
    args = ap.parse_args()

    from ontask.models import load_scorer
    from ontask.models.embedded.weights import load_embedded_scorer
    from ontask.cache import ResultCache
    from ontask.embed import load_embedder
    from ontask.scoring import run_score
    from ontask.scoring.config import ScoreConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_rows(Path(args.data), args.first_instance)
    n_all = len(rows)
    if args.rows:
        rows = rows[: args.rows]
    pairs = build_pairs(rows, args.seed)
    data = out / "pairs.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for r in pairs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(rows)} true rows (of {n_all}; first instance only: {args.first_instance}), "
          f"{len(pairs)} rows to score -> {data}")

    t0 = time.perf_counter()
    cache = ResultCache(args.cache)
    scorer = load_embedded_scorer() if args.dtype == "fp32" else load_scorer({"spec": "embedded", "dtype": args.dtype})
    print(f"scorer: embedded, {scorer.describe()['dtype']}")
    embedder = load_embedder("embedded", cache=cache)
    t_load = time.perf_counter() - t0

    cfg = ScoreConfig(metrics=["ppl", "ifd", "tss", "tss++"], alternatives="random", k=args.k, seed=args.seed)
    t1 = time.perf_counter()
    last = [time.perf_counter(), 0]

    def progress(done: int, passes: int, tokens: int) -> None:
        last[1] += done
        now = time.perf_counter()
        if now - last[0] > 60 or last[1] == len(pairs):
            print(f"  {last[1]}/{len(pairs)} rows, {tokens:,} tokens computed, {now - t1:.0f} s", flush=True)
            last[0] = now

    manifest = run_score(data, out / "random" / "scored.jsonl", cfg, scorer=scorer, cache=cache,
                         embedder=embedder, progress=progress)
    t_main = time.perf_counter() - t1
    scored = [json.loads(line) for line in open(manifest["output"], encoding="utf-8")]

    hard_scored = None
    t_hard = 0.0
    if args.hard_variant:
        cfg_h = ScoreConfig(metrics=["tss"], alternatives="hard", k=args.k, seed=args.seed)
        t2 = time.perf_counter()
        manifest_h = run_score(data, out / "hard" / "scored.jsonl", cfg_h, scorer=scorer, cache=cache, embedder=embedder)
        t_hard = time.perf_counter() - t2
        hard_scored = [json.loads(line) for line in open(manifest_h["output"], encoding="utf-8")]

    # ---- table --------------------------------------------------------------------
    results: dict[str, dict] = {}
    for col, sign in SCORES.items():
        results[col] = evaluate(scored, col, sign)
    if hard_scored is not None:
        results["tss(hard)"] = evaluate(hard_scored, "tss", 1.0)

    labels = {"tss": "tss (random)", "tss_pp": "tss++", "tss_hard": "tss_hard (tss++ part)",
              "ifd": "ifd (lower=true)", "ppl": "ppl (lower=true)", "lp": "lp (tss++ quality)",
              "tss(hard)": "tss (alternatives=hard)"}
    print()
    print("| score | ROC AUC | paired accuracy | rows |")
    print("|---|---|---|---|")
    for col, r in results.items():
        acc, npairs = r["paired"]
        print(f"| {labels.get(col, col)} | {r['auc']:.3f} | {acc:.3f} ({npairs} pairs) | {r['n']} |")

    # ---- TSS++ lambda sweep from the scored columns (no rescoring) ---------------------
    ok = [r for r in scored if r.get("tss_hard") is not None and r.get("lp") is not None]
    y = np.array([r["label"] for r in ok])
    zt = zscores(np.array([r["tss_hard"] for r in ok], dtype=float))
    zq = zscores(np.array([r["lp"] for r in ok], dtype=float))
    zr = zscores(np.array([r["tss"] for r in ok], dtype=float))
    sweep = {}
    print("\nTSS++ = z(tss_hard) + lambda * z(lp), recomputed from the columns (no rescoring);")
    print("last two columns: the same sum with the random-alternative tss, z(tss) + lambda * z(lp)")
    print("| lambda | ROC AUC | paired accuracy | AUC, random alts | paired, random alts |")
    print("|---|---|---|---|---|")
    for lam in LAMBDAS:
        row = {}
        for name, base in (("hard", zt), ("random", zr)):
            s = base + lam * zq
            tmp = [{"pair_id": r["pair_id"], "label": r["label"], "v": float(v)} for r, v in zip(ok, s)]
            row[name] = {"auc": auc_of(y, s), "paired": paired_accuracy(tmp, "v", 1.0)[0]}
        sweep[lam] = row
        print(f"| {lam} | {row['hard']['auc']:.3f} | {row['hard']['paired']:.3f} "
              f"| {row['random']['auc']:.3f} | {row['random']['paired']:.3f} |")

    tss_auc, pp_auc = results["tss"]["auc"], results["tss_pp"]["auc"]
    print(f"\ntargets: tss AUC >= 0.80: {'PASS' if tss_auc >= 0.80 else 'FAIL'} ({tss_auc:.3f}); "
          f"tss++ > tss: {'PASS' if pp_auc > tss_auc else 'FAIL'} ({pp_auc:.3f} vs {tss_auc:.3f})")

    print(f"\ntiming: load {t_load:.1f} s, score (random + hard alternatives) {t_main:.1f} s, "
          f"hard variant {t_hard:.1f} s; tokens computed {manifest['tokens_computed']:,}, "
          f"{manifest['tokens_per_s']} tok/s")
    print("run.json counts:", json.dumps(manifest["counts"]))
    print("run.json timings:", json.dumps(manifest["timings"]))
    if args.hard_variant:
        print("hard variant counts:", json.dumps(manifest_h["counts"]))
    summary = {
        "rows_true": len(rows), "rows_scored": len(scored), "k": args.k, "seed": args.seed,
        "results": {c: {"auc": r["auc"], "paired_accuracy": r["paired"][0], "pairs": r["paired"][1], "n": r["n"]}
                    for c, r in results.items()},
        "lambda_sweep": {str(k): v for k, v in sweep.items()},
        "timing_s": {"load": t_load, "score": t_main, "hard_variant": t_hard},
        "counts": manifest["counts"], "tokens_computed": manifest["tokens_computed"],
        "tokens_per_s": manifest["tokens_per_s"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"summary: {out / 'summary.json'}")


if __name__ == "__main__":
    main()

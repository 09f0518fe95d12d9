"""Constraints, measured: checker mapping, ignored-constraint flags, and `variants` against `random`.

    .venv/bin/python benchmarks/bench_constraints.py mapping [--decomposed DECOMPOSED.jsonl]
    .venv/bin/python benchmarks/bench_constraints.py flags
    .venv/bin/python benchmarks/bench_constraints.py variants [--limit 40]

mapping   constraint sentences cut by hand from ../shared/data/ifeval_dev.jsonl
          (tests/data/ifeval_cut50.json, and the held-out ifeval_cut_heldout.json): share for
          which the mapper names the listed IFEval checker, and with its parameters. With
          --decomposed (the output of `ontask decompose ../shared/data/ifeval_dev.jsonl`), the
          recall of each prompt's listed checker types end to end through the decomposer, per
          type; and, as a bound on the mapper alone, the recall when the whole prompt is mapped.
flags     tests/data/ifeval_responses.json: for IFEval prompts, a response that satisfies every
          constraint and one that ignores a target constraint (both written by hand). Each is
          scored with the embedded SmolLM2, `--alternatives variants` (the hand-cut constraint
          spans cut out of the prompt: no model writes them), and the confusion matrix of the
          `ignored_constraints` flag against the truth is printed, with the target constraint's
          specificity for both kinds of response.
variants  rows of ../shared/data/user_oriented_dev.jsonl (the first --limit): TSS with `random`
          alternatives and with `variants` (decomposed and written back by the embedded
          SmolLM2, or with --hand-cut FILE the decompositions written by hand in it (e.g.
          tests/data/user_oriented_cut19.json), cut out as text; Remove only: there is no constraint database for these tasks), k=4,
          the embedded scorer; mean TSS of both on the rows both scored.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FIXTURES = ROOT / "tests" / "data"
console = Console()


def mapping(decomposed: Path | None) -> None:
    from ontask.checks.evaluate import read_prompts, recall_of_listed_types, score_hand_cut

    prompts = read_prompts(SHARED / "ifeval_dev.jsonl")
    table = Table(title="constraint sentence -> IFEval checker (hand-cut sentences)")
    for col in ("fixture", "constraints", "right checker", "right checker + parameters"):
        table.add_column(col, justify="right")
    for name in ("ifeval_cut50.json", "ifeval_cut_heldout.json"):
        path = FIXTURES / name
        if not path.exists():
            continue
        s = score_hand_cut(prompts, json.loads(path.read_text(encoding="utf-8")))
        table.add_row(name, str(s.total), f"{s.typed} ({s.type_rate:.1%})", f"{s.exact} ({s.exact_rate:.1%})")
        for m in s.misses:
            console.print(f"  {name} miss: {m}", markup=False)
    console.print(table)
    if decomposed is None:
        return
    rows = [json.loads(line) for line in decomposed.read_text(encoding="utf-8").splitlines() if line.strip()]
    failed_path = decomposed.with_name(decomposed.stem + ".failed.jsonl")
    failed = [json.loads(line) for line in failed_path.read_text(encoding="utf-8").splitlines()] if failed_path.exists() else []
    all_rows = [json.loads(line) for line in (SHARED / "ifeval_dev.jsonl").read_text(encoding="utf-8").splitlines()]
    done = {r["key"] for r in rows}
    missing = [{**r, "tasks": []} for r in all_rows if r["key"] not in done]  # failed decompositions: all missed
    e2e = recall_of_listed_types(rows + missing)
    whole = recall_of_listed_types({**r, "tasks": [{"constraints": [{"text": r["prompt"]}]}]} for r in all_rows)
    t = Table(title=f"recall of the listed checker types, {len(all_rows)} prompts "
                    f"({len(rows)} decomposed, {len(missing)} failed: {len(failed)} in {failed_path.name})")
    for col in ("checker type", "listed", "found via decomposer", "recall", "found mapping the whole prompt", "recall "):
        t.add_column(col, justify="right")
    for iid in sorted(e2e.listed, key=lambda k: -e2e.listed[k]):
        n = e2e.listed[iid]
        t.add_row(iid, str(n), str(e2e.found[iid]), f"{e2e.found[iid] / n:.0%}", str(whole.found[iid]), f"{whole.found[iid] / n:.0%}")
    t.add_row("all", str(sum(e2e.listed.values())), str(sum(e2e.found.values())), f"{e2e.overall:.1%}",
              str(sum(whole.found.values())), f"{whole.overall:.1%}")
    console.print(t)


def _score(rows: list[dict], out: Path, cfg, variants=None) -> list[dict]:
    from ontask.models import load_scorer
    from ontask.cache import ResultCache
    from ontask.scoring import run_score

    src = out.with_suffix(".in.jsonl")
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    scorer = _score.scorer = getattr(_score, "scorer", None) or load_scorer("embedded")
    run_score(src, out, cfg, scorer=scorer, cache=ResultCache(out.parent / "cache.sqlite"), variants=variants)
    return [json.loads(line) for line in (out / "data.jsonl").read_text(encoding="utf-8").splitlines()]


def flags() -> None:
    from ontask.scoring import ScoreConfig
    from ontask.tcia.variants import VariantMaker

    prompts = {r["key"]: r for r in map(json.loads, (SHARED / "ifeval_dev.jsonl").read_text(encoding="utf-8").splitlines())}
    cuts = {r["key"]: r for r in json.loads((FIXTURES / "ifeval_cut50.json").read_text(encoding="utf-8"))}
    cases = json.loads((FIXTURES / "ifeval_responses.json").read_text(encoding="utf-8"))
    rows = []
    for case in cases:
        p = prompts[case["key"]]
        spans = cuts[case["key"]]["constraints"]
        cons = [{"text": p["prompt"][c["span"][0]: c["span"][1]], "category": "Format"} for c in spans]
        target = next(p["prompt"][c["span"][0]: c["span"][1]] for c in spans if c["instruction_id"] == case["target"])
        for kind in ("satisfy", "ignore"):
            rows.append({"instruction": p["prompt"], "input": "", "output": case[kind], "base_query": p["base_query"],
                         "task_type": "", "constraints": cons, "_kind": kind, "_target": target, "_key": case["key"]})
    with tempfile.TemporaryDirectory() as tmp:
        out = _score(rows, Path(tmp) / "flags", ScoreConfig(metrics=["tss"], alternatives="variants", k=4),
                     VariantMaker(decomposer=None, composer=None, verifier=None))
    got = {(r["_key"], r["_kind"]): r for r in out}
    cm = {(truth, flag): 0 for truth in ("ignore", "satisfy") for flag in (True, False)}
    cm_check = dict(cm)
    spec = {"satisfy": [], "ignore": []}
    for r in got.values():
        i = [c["text"] for c in r["constraints"]].index(r["_target"])
        flagged = r["_target"] in r["ignored_constraints"]
        cm[(r["_kind"], flagged)] += 1
        cm_check[(r["_kind"], r["constraint_checks"][i] is False)] += 1
        if r["constraint_specificity"][i] is not None:
            spec[r["_kind"]].append(r["constraint_specificity"][i])
    for title, m in (("flag: ignored = checker says violated AND specificity <= 0", cm),
                     ("checker alone: violated", cm_check)):
        t = Table(title=f"{title} ({len(cases)} prompts x 2 responses, embedded SmolLM2)")
        t.add_column("truth"); t.add_column("flagged", justify="right"); t.add_column("not flagged", justify="right")
        for truth in ("ignore", "satisfy"):
            t.add_row({"ignore": "response ignores the target", "satisfy": "response satisfies it"}[truth], str(m[(truth, True)]), str(m[(truth, False)]))
        console.print(t)
    t = Table(title="specificity of the target constraint: lp(out | full) - lp(out | without it)")
    for col in ("response", "n", "mean", "median", "share <= 0"):
        t.add_column(col, justify="right")
    for kind, xs in spec.items():
        t.add_row(kind, str(len(xs)), f"{statistics.mean(xs):+.4f}", f"{statistics.median(xs):+.4f}",
                  f"{sum(x <= 0 for x in xs) / len(xs):.0%}")
    console.print(t)


def variants(limit: int, refinements: int, hand_cut: Path | None) -> None:
    from ontask.models import CachedGenerator, load_generator
    from ontask.cache import ResultCache
    from ontask.scoring import ScoreConfig
    from ontask.tcia.variants import VariantMaker

    hand = {}
    if hand_cut:  # decompositions by hand (spans of the instruction): variants are cut, no model writes them
        for d in json.loads(hand_cut.read_text(encoding="utf-8")):
            hand[d["id"]] = d
    rows = []
    lines = (SHARED / "user_oriented_dev.jsonl").read_text(encoding="utf-8").splitlines()
    for line in (lines if hand_cut else lines[:limit]):
        r = json.loads(line)
        if hand_cut and r["id"] not in hand:
            continue
        inst = r["instances"][0]
        row = {"instruction": r["instruction"], "input": inst["input"], "output": inst["output"]}
        if hand_cut:
            d = hand[r["id"]]
            bq = d.get("base_query_span")
            row.update(task_type=d["task_type"], base_query=r["instruction"][bq[0]:bq[1]] if bq else r["instruction"],
                       constraints=[{"text": r["instruction"][c["span"][0]:c["span"][1]], "category": c["category"]}
                                    for c in d["constraints"]])
        rows.append(row)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        random_rows = _score(rows, tmp / "random", ScoreConfig(metrics=["tss"], alternatives="random", k=4))
        if hand_cut:
            maker = VariantMaker(decomposer=None, composer=None, verifier=None)
        else:
            gen = CachedGenerator(load_generator("embedded"), ResultCache(tmp / "cache.sqlite"))
            maker = VariantMaker(decomposer=gen, composer=gen, verifier=gen, max_refinements=refinements)
        variant_rows = _score(rows, tmp / "variants", ScoreConfig(metrics=["tss"], alternatives="variants", k=4), maker)
        vsets = [json.loads(line) for line in (tmp / "variants" / "variants.jsonl").read_text(encoding="utf-8").splitlines()]
        failed = [json.loads(line) for line in (tmp / "variants" / "failed.jsonl").read_text(encoding="utf-8").splitlines()]
    by_inst = {r["instruction"]: r["tss"] for r in random_rows}
    pairs = [(by_inst[r["instruction"]], r["tss"]) for r in variant_rows if r["instruction"] in by_inst]
    how = f"decompositions by hand ({hand_cut.name})" if hand_cut else f"first {limit} rows, embedded decomposer + composer, {refinements} refinement round(s)"
    t = Table(title=f"TSS by alternatives, user_oriented_dev, embedded SmolLM2 scorer, k=4, {how}")
    for col in ("alternatives", "rows scored", "mean TSS, all its rows", "mean TSS, rows both scored", "median, rows both scored"):
        t.add_column(col, justify="right")
    t.add_row("random", str(len(random_rows)), f"{statistics.mean(r['tss'] for r in random_rows):.4f}",
              f"{statistics.mean(a for a, _ in pairs):.4f}", f"{statistics.median(a for a, _ in pairs):.4f}")
    t.add_row("variants", str(len(variant_rows)), f"{statistics.mean(r['tss'] for r in variant_rows):.4f}",
              f"{statistics.mean(b for _, b in pairs):.4f}", f"{statistics.median(b for _, b in pairs):.4f}")
    console.print(t)
    lower = sum(b < a for a, b in pairs)
    n_var = [sum(1 for v in vs["variants"] if v["text"]) for vs in vsets]
    console.print(f"on the {len(pairs)} rows both scored: variants lower on {lower} ({lower / len(pairs):.0%}); "
                  f"mean difference {statistics.mean(b - a for a, b in pairs):+.4f}. Variants written per instruction: "
                  f"mean {statistics.mean(n_var):.2f}; rows without any variant: {len(failed)} "
                  f"({'; '.join(sorted({f['reason'][:60] for f in failed}))})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("mapping")
    m.add_argument("--decomposed", type=Path)
    sub.add_parser("flags")
    v = sub.add_parser("variants")
    v.add_argument("--limit", type=int, default=40)
    v.add_argument("--refinements", type=int, default=1, help="composer rounds after a failed verification")
    v.add_argument("--hand-cut", type=Path, help="decompositions by hand, e.g. tests/data/user_oriented_cut19.json "
                   "(its rows only; constraints cut out of the instruction as text) instead of the embedded decomposer")
    args = ap.parse_args()
    if not SHARED.exists():
        sys.exit(f"{SHARED} not found")
    if args.what == "mapping":
        mapping(args.decomposed)
    elif args.what == "flags":
        flags()
    else:
        variants(args.limit, args.refinements, args.hand_cut)


if __name__ == "__main__":
    main()

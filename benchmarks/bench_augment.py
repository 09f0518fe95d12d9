"""`ontask augment` end to end against the fake server (own process) with real latency, streaming
and stage by stage.

One seed, K=300 states, k=60 sampled, 2 inputs per instruction, 2 responders, every role
served by the fake OpenAI-compatible server answering after `--latency` seconds (the
deterministic TCIA handler), concurrency 64 per model. The run is done twice, each with a
fresh cache: steps 4-6 streaming (the default) and stage by stage (`streaming: false`);
their output files must be identical, and the script checks it.

Ideal wall times, from the server's request log (calls actually sent):
- streaming: no call can start before the seed's decomposition returns (the search needs
  it), so the ideal is one latency for that call plus the larger of two bounds over the
  rest: the busiest model's waves, max over models of ceil(its calls / its concurrency)
  (concurrency is per model: the roles served by the same `openai:tiny` spec share one
  backend and its in-flight limit), and the longest dependency chain of calls a state goes
  through (compose and verify per round, validity, respond, judge the answer; a
  refinement round answered from the cache is counted too, which can only overstate this
  bound: the table prints both bounds, and here the waves bind), times the latency.
  Search, code checks and embeddings (CPU) count as zero.
- stage by stage: the sum over its waves of ceil(calls in the wave / concurrency) x
  latency, a wave being one batch a stage hands to a role's generator.
The table shows calls, the measured wall time (the whole run_augment: decomposition,
search, steps 4-6, the manifest), the ideal and the ratio per mode, then the funnel.

    .venv/bin/python benchmarks/bench_augment.py
    .venv/bin/python benchmarks/bench_augment.py --latency 0.2 --concurrency 64 --states 300 --samples 60
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from importlib.resources import files
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_chat_concurrency import fake_server  # noqa: E402

from ontask.cache import ResultCache  # noqa: E402
from ontask.embed import load_embedder  # noqa: E402
from ontask.embed.embedder import Embedder  # noqa: E402
from ontask.tcia.config import AugmentConfig  # noqa: E402
from ontask.tcia.database import build_database  # noqa: E402
from ontask.tcia.pipeline import Roles, Seed, run_augment  # noqa: E402
from ontask.tcia.sources import read_inputs  # noqa: E402

SEED = ("Reply to the customer's message below as a Brightleaf Home support agent. Apologise once, "
        "give one concrete next step, and keep the reply under 120 words.")
OUTPUTS = ("data.jsonl", "instructions.jsonl", "failed.jsonl")


def run_mode(streaming: bool, args: argparse.Namespace, tmp: Path, db, emb) -> dict:
    """One run against its own fake server and cache; its wall time, calls and ideal. The
    cache starts as a copy of the one that built the database, so each run embeds its
    instructions itself (cold), as a first real run does."""
    data = Path(str(files("ontask") / "data"))
    mode = "streaming" if streaming else "stage by stage"
    work = tmp / ("stream" if streaming else "stage")
    log = work / "requests.jsonl"
    work.mkdir()
    copy_cache(emb.cache, work / "cache.sqlite")
    cache = ResultCache(work / "cache.sqlite")
    emb = Embedder(emb.model, emb.name, cache=cache)
    flags = ["--latency", str(args.latency), "--chat-handler", "tcia", "--model-name", "tiny,tiny-b"]
    with fake_server(*flags, log=log) as url:
        cfg = AugmentConfig(decomposer="openai:tiny", composer="openai:tiny", verifier="openai:tiny",
                            judge="openai:tiny", responders=["openai:tiny", "openai:tiny-b"], base_url=url,
                            concurrency=args.concurrency, max_states=args.states, samples=args.samples,
                            inputs_per_instruction=2, min_validity=3.0, min_consistency=3.0, streaming=streaming)
        roles = Roles(cfg, cache)
        t0 = time.perf_counter()
        manifest = run_augment([Seed(SEED)], read_inputs(data / "demo_inputs.jsonl"), cfg, work / "run",
                               db=db, embedder=emb, roles=roles)
        wall = time.perf_counter() - t0
    entries = [json.loads(x) for x in log.read_text().splitlines()]
    if streaming:
        ideal, waves, chain = streaming_ideal(entries, work / "run", args)
        bound = f"1 + max({waves} waves, chain {chain})"
    else:
        batches = [n for g in roles.by_role.values() for n in g.batches]
        ideal = sum(math.ceil(n / args.concurrency) * args.latency for n in batches)
        bound = f"{sum(math.ceil(n / args.concurrency) for n in batches)} waves in {len(batches)} batches"
    return {"mode": mode, "calls": len(entries), "wall": wall, "ideal": ideal, "bound": bound, "manifest": manifest,
            "run": work / "run"}


def copy_cache(cache: ResultCache, dest: Path) -> None:
    """A copy of a cache that is still open, with what it holds in its write-ahead log: a
    plain file copy of the SQLite file would miss every entry not yet checkpointed (here,
    all of the database's embeddings), and the run would embed the constraints cold."""
    src, dst = sqlite3.connect(cache.path), sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def streaming_ideal(entries: list[dict], run: Path, args: argparse.Namespace) -> tuple[float, int, int]:
    """(1 (the seed's decomposition) + max(busiest model's waves, longest chain)) x latency,
    and the two bounds."""
    per_model = Counter(e["body"]["model"] for e in entries)
    per_model["tiny"] -= 1  # the seed's decomposition, counted apart
    waves = max(math.ceil(n / args.concurrency) for n in per_model.values())
    chain = max(_chain(s) for s in (json.loads(x) for x in (run / "instructions.jsonl").read_text().splitlines()))
    return args.latency * (1 + max(waves, chain)), waves, chain


def _chain(state: dict) -> int:
    """Calls in a row one state went through: compose + verify per round, then validity
    (the on-task calls run beside it), then respond and judge when it was paired."""
    if state["status"] == "not_sampled":
        return 0
    steps = 2 * state["rounds"]
    if state["status"] in ("valid", "invalid", "validity_failed"):
        steps += 1
    if state["pairs"]:
        steps += 2
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--states", type=int, default=300)
    ap.add_argument("--samples", type=int, default=60)
    args = ap.parse_args()
    data = Path(str(files("ontask") / "data"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-augment-"))
    emb = load_embedder("embedded", cache=ResultCache(tmp / "embed.sqlite"))
    db = build_database([json.loads(x) for x in (data / "demo_constraints.jsonl").read_text().splitlines()], emb)
    results = [run_mode(True, args, tmp, db, emb), run_mode(False, args, tmp, db, emb)]
    same = all((results[0]["run"] / n).read_bytes() == (results[1]["run"] / n).read_bytes() for n in OUTPUTS)
    print(f"\nlatency {args.latency} s, concurrency {args.concurrency} per model; outputs identical: {same}\n")
    print("| mode | calls | wall s | ideal s | ideal, in latencies | ratio |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['calls']} | {r['wall']:.2f} | {r['ideal']:.2f} | {r['bound']} | "
              f"{r['wall'] / r['ideal']:.2f} |")
    s, g = results
    print(f"\nstreaming wall / stage-by-stage wall: {s['wall'] / g['wall']:.2f}")
    for r in results:
        print(f"timings per stage, {r['mode']} (s):", r["manifest"]["timings_s"])
    print("funnel:", json.dumps(s["manifest"]["funnel"]))
    if not same:
        raise SystemExit("streaming and stage-by-stage outputs differ")


if __name__ == "__main__":
    main()

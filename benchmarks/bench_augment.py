"""`ontask augment` end to end against the fake server (own process) with real latency.

One seed, K=300 states, k=60 sampled, 2 inputs per instruction, 2 responders, every role
served by the fake OpenAI-compatible server answering after `--latency` seconds (the
deterministic TCIA handler), concurrency 64. The pipeline runs stage by stage, so its
ideal wall time is the sum over its waves of ceil(calls in the wave / concurrency) x
latency, where a wave is one batch a stage hands to a role's generator (the stages run
one after another). The table shows the calls (from the server's request log), the
waves, the measured wall time, that ideal and the ratio. The funnel is printed too.

    .venv/bin/python benchmarks/bench_augment.py
    .venv/bin/python benchmarks/bench_augment.py --latency 0.2 --concurrency 64 --states 300 --samples 60
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_chat_concurrency import fake_server  # noqa: E402

from ontask.cache import ResultCache  # noqa: E402
from ontask.embed import load_embedder  # noqa: E402
from ontask.tcia.config import AugmentConfig  # noqa: E402
from ontask.tcia.database import build_database  # noqa: E402
from ontask.tcia.pipeline import Roles, Seed, run_augment  # noqa: E402
from ontask.tcia.sources import read_inputs  # noqa: E402

SEED = ("Reply to the customer's message below as a Brightleaf Home support agent. Apologise once, "
        "give one concrete next step, and keep the reply under 120 words.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--states", type=int, default=300)
    ap.add_argument("--samples", type=int, default=60)
    args = ap.parse_args()
    data = Path(str(files("ontask") / "data"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-augment-"))
    cache = ResultCache(tmp / "cache.sqlite")
    emb = load_embedder("embedded", cache=cache)
    db = build_database([json.loads(x) for x in (data / "demo_constraints.jsonl").read_text().splitlines()], emb)
    log = tmp / "requests.jsonl"
    flags = ["--latency", str(args.latency), "--chat-handler", "tcia", "--model-name", "tiny,tiny-b"]
    with fake_server(*flags, log=log) as url:
        cfg = AugmentConfig(decomposer="openai:tiny", composer="openai:tiny", verifier="openai:tiny",
                            judge="openai:tiny", responders=["openai:tiny", "openai:tiny-b"], base_url=url,
                            concurrency=args.concurrency, max_states=args.states, samples=args.samples,
                            inputs_per_instruction=2, min_validity=3.0, min_consistency=3.0)
        roles = Roles(cfg, cache)
        t0 = time.perf_counter()
        manifest = run_augment([Seed(SEED)], read_inputs(data / "demo_inputs.jsonl"), cfg, tmp / "run",
                               db=db, embedder=emb, roles=roles)
        wall = time.perf_counter() - t0
    entries = [json.loads(x) for x in log.read_text().splitlines()]
    waves = [n for role in roles.by_role.values() for n in role.batches]
    ideal = sum(math.ceil(n / args.concurrency) * args.latency for n in waves)
    print(f"\n| calls | waves | wall s | ideal s | ratio | latency s | concurrency |\n|---|---|---|---|---|---|---|\n"
          f"| {len(entries)} | {len(waves)} | {wall:.2f} | {ideal:.2f} | {wall / ideal:.2f} | {args.latency} | {args.concurrency} |")
    print("\ncalls per wave, by role:", {r: g.batches for r, g in roles.by_role.items()})
    print("timings per stage (s):", manifest["timings_s"])
    print("funnel:", json.dumps(manifest["funnel"]))


if __name__ == "__main__":
    main()

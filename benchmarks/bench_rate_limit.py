"""Adaptive rate control against a server that refuses more than 16 requests at a time.

The fake OpenAI-compatible server (its own process) answers chat calls after a fixed
latency (0.2 s) and answers 429 (Retry-After 50 ms) to any request that arrives while 16
are being answered, as a gateway or TGI's max_concurrent_requests does. The client is
allowed 64 in flight and must find the 16 itself. The ideal is what a client that knew the
limit would take: ceil(N / 16) x latency. Rows:

- adaptive: ontask's default (AIMD: slow start from 16, halve on 429, probe slowly);
- fixed 64: adaptive off, 64 in flight (what a client without rate control does);
- fixed 16: adaptive off, told the limit (the ideal client, for reference).

Each row is a fresh generator and a fresh server process. Targets: adaptive within 1.3x of
the ideal with under 5% of calls rejected.

    .venv/bin/python benchmarks/bench_rate_limit.py
    .venv/bin/python benchmarks/bench_rate_limit.py --calls 2000 --limit 32
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_chat_concurrency import fake_server, make_requests  # noqa: E402

from ontask.models.base import ChatResult  # noqa: E402
from ontask.models.openai.chat import OpenAIChatGenerator, RetryPolicy  # noqa: E402
from ontask.models.transport.rate import RateControl  # noqa: E402


def run(url: str, n: int, concurrency: int, rate: RateControl) -> tuple[float, int, OpenAIChatGenerator]:
    gen = OpenAIChatGenerator("tiny", base_url=url, concurrency=concurrency, rate=rate,
                              retry=RetryPolicy(max_attempts=30, max_wait=2.0))
    t0 = time.perf_counter()
    out = gen.chat(make_requests(n, "rate"))
    return time.perf_counter() - t0, sum(isinstance(o, ChatResult) for o in out), gen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--limit", type=int, default=16, help="the server's concurrent-request limit")
    ap.add_argument("--concurrency", type=int, default=64, help="the client's maximum in flight")
    ap.add_argument("--latency", type=float, default=0.2)
    args = ap.parse_args()
    n, lat = args.calls, args.latency
    ideal = math.ceil(n / args.limit) * lat
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    setups = [("adaptive", args.concurrency, RateControl()),
              (f"fixed {args.concurrency}", args.concurrency, RateControl(adaptive=False)),
              (f"fixed {args.limit}", args.limit, RateControl(adaptive=False))]
    print()
    print(f"| client | calls | server limit | wall s | ideal s | ratio | ok | 429s | 429s / calls | decreases | final limit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, conc, rate in setups:
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "requests.jsonl"
            with fake_server("--latency", str(lat), "--max-concurrent", str(args.limit), log=log) as url:
                wall, ok, gen = run(url, n, conc, rate)
            rejected = sum(1 for line in log.read_text().splitlines() if json.loads(line)["status"] == 429)
        st = gen.rate_state
        print(f"| {name} | {n} | {args.limit} | {wall:.2f} | {ideal:.2f} | {wall / ideal:.3f} | {ok} | {rejected} | "
              f"{rejected / n:.1%} | {st.decreases} | {st.limit:.1f} |")


if __name__ == "__main__":
    main()

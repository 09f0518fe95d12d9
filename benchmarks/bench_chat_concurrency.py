"""Client-side throughput of OpenAIChatGenerator against a fake server in its own process.

The fake OpenAI-compatible server (`python -m ontask.testing.fake_server`) runs in a
subprocess, so client and server do not share a GIL, and answers every chat request after
a fixed latency (0.2 s by default). With N calls at concurrency C the ideal wall time is
ceil(N / C) * latency; the ratio measured / ideal shows what the client adds (target
<= 1.2). A second run injects faults (500s, 429s, broken bodies, answers slower than the
client's timeout) and reports how many calls still succeeded and how long it took.

    .venv/bin/python benchmarks/bench_chat_concurrency.py
    .venv/bin/python benchmarks/bench_chat_concurrency.py --calls 2000 --concurrency 128 --skip-faults

No data or model is needed.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, Field

from ontask.models.base import ChatRequest, ChatResult
from ontask.models.openai.chat import OpenAIChatGenerator, RetryPolicy


class Review(BaseModel):
    summary: str = Field(max_length=80)
    rating: int = Field(ge=1, le=5)
    sentiment: Literal["positive", "neutral", "negative"]
    keywords: list[str] = Field(min_length=1, max_length=4)


@contextmanager
def fake_server(*flags: str, log: Path | None = None) -> Iterator[str]:
    """Start the fake server CLI in a subprocess; yield its base URL; stop it."""
    cmd = [sys.executable, "-m", "ontask.testing.fake_server", "--port", "0", *flags]
    if log is not None:
        cmd += ["--log", str(log)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip() if proc.stdout else ""
        if not url.startswith("http"):
            raise RuntimeError(f"the fake server did not start (exit code {proc.poll()})")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout:
            proc.stdout.close()


def make_requests(n: int, tag: str) -> list[ChatRequest]:
    """n distinct calls, every other one asking for a Review object."""
    return [ChatRequest.of([{"role": "system", "content": "You review products briefly."},
                            {"role": "user", "content": f"[{tag}] Review product number {i}: a sturdy blue kettle."}],
                           response_model=Review if i % 2 else None, max_tokens=256) for i in range(n)]


def timed(gen: OpenAIChatGenerator, reqs: list[ChatRequest], done: dict[int, float] | None = None) -> tuple[float, float, list]:
    """Wall and client CPU seconds of one chat() call; `done[i]` = when call i finished."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    out = gen.chat(reqs, on_result=None if done is None else lambda i, _: done.__setitem__(i, time.perf_counter() - t0))
    return time.perf_counter() - t0, time.process_time() - cpu0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--repeat", type=int, default=1, help="clean runs; the fastest is reported")
    ap.add_argument("--skip-faults", action="store_true")
    args = ap.parse_args()
    n, c, lat = args.calls, args.concurrency, args.latency
    ideal = math.ceil(n / c) * lat
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")

    rows = []
    with fake_server("--latency", str(lat)) as url:
        gen = OpenAIChatGenerator("tiny", base_url=url, concurrency=c)
        gen.chat(make_requests(c, "warm-up"))  # imports, schema cache; not timed
        for r in range(args.repeat):
            wall, cpu, out = timed(gen, make_requests(n, f"run {r}"))
            ok = sum(isinstance(o, ChatResult) for o in out)
            rows.append((wall, cpu, ok))
    wall, cpu, ok = min(rows)
    print()
    print("| run | calls | concurrency | latency s | wall s | ideal s | ratio | client CPU s | ok | failed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| clean | {n} | {c} | {lat:g} | {wall:.2f} | {ideal:.2f} | {wall / ideal:.3f} | {cpu:.2f} | {ok} | {n - ok} |")

    if args.skip_faults:
        return
    faults = ["--fail-rate-500", "0.05", "--fail-rate-429", "0.05", "--fail-rate-bad-body", "0.02",
              "--fail-rate-timeout", "0.01", "--retry-after", "0.2", "--seed", "7"]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "requests.jsonl"
        with fake_server("--latency", str(lat), *faults, log=log) as url:
            gen = OpenAIChatGenerator("tiny", base_url=url, concurrency=c, timeout=2.0, retry=RetryPolicy())
            done: dict[int, float] = {}
            wall, cpu, out = timed(gen, make_requests(n, "faults"), done)
        ok = sum(isinstance(o, ChatResult) for o in out)
        kinds = collections.Counter(json.loads(line)["fault"] or "none" for line in log.read_text().splitlines())
    attempts = sum(o.attempts for o in out)
    print(f"| faults | {n} | {c} | {lat:g} | {wall:.2f} | {ideal:.2f} | {wall / ideal:.3f} | {cpu:.2f} | {ok} | {n - ok} |")
    print()
    print(f"fault run: {attempts} HTTP attempts; server saw {dict(sorted(kinds.items()))}")
    per_call = collections.Counter(o.attempts for o in out)
    finish = sorted(done.values())
    slowest = max(done, key=done.get)
    print(f"  attempts per call: {dict(sorted(per_call.items()))}; calls finished by: "
          f"p50 {finish[len(finish) // 2]:.2f}s, p99 {finish[int(len(finish) * 0.99)]:.2f}s, "
          f"last {finish[-1]:.2f}s (call {slowest}, {out[slowest].attempts} attempts)")
    reasons = collections.Counter(o.reason for o in out if not isinstance(o, ChatResult))
    for reason, count in reasons.most_common(5):
        print(f"  failed x{count}: {reason}")


if __name__ == "__main__":
    main()

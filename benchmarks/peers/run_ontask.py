"""ontask's production path: OpenAIChatGenerator wrapped in CachedGenerator over a ResultCache.

Runs in the project's own venv (.venv/bin/python). Each answer is committed to the SQLite
cache the moment it arrives; rerunning with the same --cache resends only what is missing.

    .venv/bin/python benchmarks/peers/run_ontask.py --base-url URL --prompts P.json --cache C.sqlite
"""

from __future__ import annotations

import argparse
import time

from common import MAX_TOKENS, MODEL, load_prompts, messages, report

from ontask.cache import ResultCache
from ontask.models.base import ChatRequest, ChatResult
from ontask.models.cached import CachedGenerator
from ontask.models.openai.chat import OpenAIChatGenerator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--cache", required=True, help="SQLite file (created if missing)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--fixed", action="store_true",
                    help="rate={'adaptive': False}: a fixed number in flight instead of the AIMD controller")
    args = ap.parse_args()

    prompts = load_prompts(args.prompts)
    reqs = [ChatRequest.of(messages(p), max_tokens=MAX_TOKENS) for p in prompts]
    cache = ResultCache(args.cache)
    kw = {"rate": {"adaptive": False}} if args.fixed else {}
    gen = CachedGenerator(OpenAIChatGenerator(MODEL, base_url=args.base_url, concurrency=args.concurrency, **kw), cache)
    t0 = time.perf_counter()
    out = gen.chat(reqs)
    wall = time.perf_counter() - t0
    ok = sum(isinstance(o, ChatResult) for o in out)
    s = gen.stats
    report(client="ontask-fixed" if args.fixed else "ontask", wall_s=wall, ok=ok, total=len(reqs), cached=s.cached, sent=s.sent, failed=s.failed,
           settings=f"OpenAIChatGenerator(concurrency={args.concurrency}{', rate adaptive=False' if args.fixed else ''}) in CachedGenerator, fresh ResultCache "
                    "(SQLite, one commit per answer), default RetryPolicy")
    cache.close()


if __name__ == "__main__":
    main()

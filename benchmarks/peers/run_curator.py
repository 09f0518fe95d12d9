"""bespokelabs-curator 0.1.31: curator.LLM, backend "openai", online mode, against the fake server.

Runs in .venv-peers. Settings chosen to go fast at a fixed number of requests in flight:
`max_concurrent_requests` = --concurrency (curator holds an asyncio.Semaphore of that size
around each request, retries included), request/token-per-minute limits set far above
anything reached (so its token-bucket throttle never waits), `seconds_to_pause_on_rate_limit`
1 s (its minimum; the default 10 s pause after a 429 would dominate the fault run),
`require_all_responses` False (so a run with failures still returns its rows to count).
Curator's cache (requests/responses JSONL under working_dir/<fingerprint of dataset +
prompt function + model>) is on, in a fresh --work-dir; reusing the same --work-dir resumes.

    .venv-peers/bin/python benchmarks/peers/run_curator.py --base-url URL --prompts P.json --work-dir DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

# Offline and quiet, before curator is imported.
os.environ.setdefault("TELEMETRY_ENABLED", "false")
os.environ.setdefault("CURATOR_DISABLE_RICH_DISPLAY", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENAI_API_KEY", "EMPTY")
# curator loads tiktoken's cl100k_base at start-up, which tiktoken downloads; litellm (a curator
# dependency) ships that file, so point tiktoken's cache at it (no network needed).
_litellm = importlib.util.find_spec("litellm")
if _litellm and _litellm.origin:
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(_litellm.origin).parent / "litellm_core_utils" / "tokenizers"))

from common import MAX_TOKENS, MODEL, load_prompts, messages, report  # noqa: E402

from bespokelabs import curator  # noqa: E402


class Chat(curator.LLM):
    def prompt(self, row):
        return messages(row)

    def parse(self, row, response):
        return {"user": row["user"], "response": response}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--work-dir", required=True, help="curator's cache/working dir (fresh = no cache hits)")
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()

    prompts = load_prompts(args.prompts)
    backend_params = {
        "base_url": args.base_url,
        "api_key": "EMPTY",
        "max_concurrent_requests": args.concurrency,
        "max_requests_per_minute": 10_000_000,
        "max_tokens_per_minute": 10_000_000_000,
        "seconds_to_pause_on_rate_limit": 1,
        "require_all_responses": False,
    }
    llm = Chat(model_name=MODEL, backend="openai", generation_params={"max_tokens": MAX_TOKENS},
               backend_params=backend_params)
    t0 = time.perf_counter()
    res = llm(prompts, working_dir=args.work_dir)
    wall = time.perf_counter() - t0
    ds = res.dataset
    ok = sum(1 for r in ds["response"] if r is not None) if len(ds) else 0
    stats = {}
    try:
        stats = {"max_concurrent_seen": res.performance_stats.max_concurrent_requests,
                 "cached": res.request_stats.cached, "failed": res.request_stats.failed}
    except Exception:  # noqa: BLE001 - only informative
        pass
    report(client="curator", wall_s=wall, ok=ok, total=len(prompts), **stats,
           settings=f"curator.LLM(backend='openai'), max_concurrent_requests={args.concurrency}, rpm 1e7, tpm 1e10, "
                    "seconds_to_pause_on_rate_limit=1, require_all_responses=False, max_retries 10 (default)")


if __name__ == "__main__":
    main()

"""distilabel 1.5.3: a Pipeline LoadDataFromDicts >> TextGeneration(OpenAILLM) against the fake server.

Runs in .venv-peers. distilabel's concurrency is the task's `input_batch_size`: each batch
is sent as one `asyncio.gather` over `OpenAILLM.agenerate` (the AsyncOpenAI client, its
own retries: `max_retries`, exponential backoff, Retry-After), and a step replica handles
one batch at a time. So `input_batch_size` = --concurrency with one replica keeps that many
requests in flight (in lock-step: the next batch starts when the slowest of the batch is
done); `--replicas R` splits it into R replicas of --concurrency/R. The generator's
`batch_size` is the same, so the first batch is ready at once. The pipeline cache is on, in
--cache-dir; `--use-cache` resumes from it (otherwise it is ignored and overwritten).

    .venv-peers/bin/python benchmarks/peers/run_distilabel.py --base-url URL --prompts P.json --cache-dir DIR
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENAI_API_KEY", "EMPTY")

from common import MAX_TOKENS, MODEL, load_prompts, report  # noqa: E402

from distilabel.models import OpenAILLM  # noqa: E402
from distilabel.pipeline import Pipeline  # noqa: E402
from distilabel.steps import LoadDataFromDicts, StepResources  # noqa: E402
from distilabel.steps.tasks import TextGeneration  # noqa: E402


def step_outputs(cache_dir: Path) -> list:
    """The `generation` column of every batch file TextGeneration wrote (latest execution):
    where run() fails while building its Distiset, the rows are still on disk."""
    import pyarrow.parquet as pq

    files = sorted(cache_dir.glob("*/*/executions/*/data/steps_outputs/text_generation_0/*.parquet"))
    if not files:
        return []
    latest = max({f.parent for f in files}, key=lambda d: d.stat().st_mtime)
    return [g for f in sorted(latest.glob("*.parquet")) for g in pq.read_table(f).column("generation").to_pylist()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--use-cache", action="store_true", help="resume from what --cache-dir holds")
    args = ap.parse_args()

    prompts = load_prompts(args.prompts)
    # TextGeneration sends [system (its system_prompt column), user (the instruction)].
    rows = [{"instruction": p["user"], "system_prompt": p["system"]} for p in prompts]
    per_replica = max(1, args.concurrency // args.replicas)
    with Pipeline(name="bench-orchestration", cache_dir=args.cache_dir) as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=per_replica)
        gen = TextGeneration(
            llm=OpenAILLM(model=MODEL, base_url=args.base_url, api_key="EMPTY",
                          generation_kwargs={"max_new_tokens": MAX_TOKENS}),
            input_batch_size=per_replica,
            resources=StepResources(replicas=args.replicas),
        )
        load >> gen
    t0 = time.perf_counter()
    extra = {}
    try:
        distiset = pipeline.run(use_cache=args.use_cache)
        wall = time.perf_counter() - t0
        generations = distiset["default"]["train"]["generation"]
    except Exception as exc:  # noqa: BLE001 - reported, rows counted from what the step wrote
        wall = time.perf_counter() - t0
        extra["run_error"] = f"{type(exc).__name__}: {exc}"[:300]
        generations = step_outputs(Path(args.cache_dir))
    ok = sum(1 for g in generations if g is not None)
    report(client="distilabel", wall_s=wall, ok=ok, total=len(prompts), rows_out=len(generations), **extra,
           settings=f"Pipeline LoadDataFromDicts(batch_size={per_replica}) >> TextGeneration(OpenAILLM, "
                    f"input_batch_size={per_replica}, replicas={args.replicas}), OpenAILLM max_retries 6 (default), "
                    f"pipeline cache dir --cache-dir, run(use_cache={args.use_cache})")


if __name__ == "__main__":
    main()

"""Local generation: the fused decoding loop against transformers' `generate`, and both
against the memory bandwidth a decoding step needs.

A decoding step of a small model on a CPU reads every weight once, plus the keys and values
of every position so far; its physical limit is those bytes over the machine's memory
bandwidth (measured here with one large read, `torch.sum` over 512 MB, on the same threads).
The table shows, per batch size and kernel path: wall time, new tokens/s, ms per step, and
the step's bytes / time as a share of that bandwidth.

Prompts are the demo's: the bundled customer messages under the support seed, as the
respond step writes them (chat template, free text, repetition penalty 1.15, greedy),
each answer up to `--max-tokens`. The texts of the two paths are compared and their
equality printed.

    .venv/bin/python benchmarks/bench_decode.py
    .venv/bin/python benchmarks/bench_decode.py --batches 1,8,16 --max-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib.resources import files
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_scoring import cpu_model, fmt_table  # noqa: E402

SEED = ("Reply to the customer's message below as a Brightleaf Home support agent. Apologise once, "
        "give one concrete next step, and keep the reply under 120 words.")


def stream_bandwidth(threads: int) -> float:
    """GB/s of one large read (a sum over 512 MB): the memory side of the step's limit."""
    torch.set_num_threads(threads)
    a = torch.ones(128 * 1024 * 1024)
    a.sum()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.numel() * 4 / best / 1e9


def step_bytes(model, batch: int, positions: float) -> float:
    """Bytes a step reads: every parameter (the tied head counted once) plus the KV cache at
    `positions` (mean over the run)."""
    cfg = model.config
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    kv_heads = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * batch * kv_heads * head_dim * positions
    return 4 * (params + kv)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,8,16", help="batch sizes (comma list; default 1,8,16)")
    ap.add_argument("--max-tokens", type=int, default=128, help="new tokens per answer (default 128)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)

    from ontask.models.base import ChatRequest
    from ontask.models.embedded.weights import load_embedded_generator

    torch.set_num_threads(args.threads)
    gen = load_embedded_generator(repetition_penalty=1.15)
    decoder = gen._decoder
    if decoder is None:
        print(f"skipped: the fused decoder does not run here ({gen.kernels})")
        return 0
    messages = [json.loads(line)["input"] for line in
                (files("ontask") / "data" / "demo_inputs.jsonl").read_text().splitlines() if line.strip()]
    bandwidth = stream_bandwidth(args.threads)
    print(f"# bench_decode  machine: {cpu_model()}, nproc={os.cpu_count()}, torch threads={torch.get_num_threads()}, "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"model: embedded SmolLM2-135M fp32; fused path: {gen.kernels}; memory bandwidth (sum over 512 MB): "
          f"{bandwidth:.1f} GB/s\n")
    rows, same = [], True
    for size in [int(b) for b in args.batches.split(",")]:
        reqs = [ChatRequest.of([{"role": "user", "content": f"{SEED}\n\n{messages[i % len(messages)]}"}],
                               max_tokens=args.max_tokens) for i in range(size)]
        texts = {}
        for path in ("fused", "generate"):
            gen._decoder = decoder if path == "fused" else None
            gen.chat(reqs[:1])  # warm-up
            t = time.perf_counter()
            out = gen.chat(reqs)
            wall = time.perf_counter() - t
            gen._decoder = decoder
            texts[path] = [o.text for o in out]
            new = sum(o.usage.completion_tokens for o in out)
            steps = max(o.usage.completion_tokens for o in out)
            prompt = max(o.usage.prompt_tokens for o in out)
            per_step = wall / steps
            share = step_bytes(gen.model, size, prompt + steps / 2) / per_step / 1e9 / bandwidth
            rows.append([str(size), path, f"{wall:.2f}", str(new), f"{new / wall:.1f}", f"{1000 * per_step:.1f}",
                         f"{100 * share:.0f}%"])
        same &= texts["fused"] == texts["generate"]
    print(fmt_table(["batch", "path", "s", "new tokens", "tokens/s", "ms/step (incl. prefill)",
                     "step bytes / bandwidth"], rows))
    print(f"\nsame text from both paths: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

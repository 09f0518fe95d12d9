#!/usr/bin/env python
"""The scorer's log-softmax at the picked tokens (`_target_logprobs`) against the variant
it replaced (exponentials summed in float64, the picked difference in float32), on the
scorer's shapes: positions x the SmolLM2 vocabulary, in 16-row slices as the scorer
runs it, the logits rewritten into one reused buffer before each run (as the head's GEMM
writes them). Prints time and the error per token against a float64 log-softmax.

    .venv/bin/python benchmarks/bench_logsoftmax.py [--positions 608]
"""

from __future__ import annotations

import argparse
import time

import torch

from ontask.models.hf.scorer import SOFTMAX_ROWS, _target_logprobs


def float64_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The previous `_target_logprobs`: max and exp in float32, the sum and log in float64."""
    top = logits.amax(dim=-1, keepdim=True)
    shifted = logits - top
    sumexp = torch.exp(shifted).sum(dim=-1, dtype=torch.float64)
    return shifted.gather(1, targets[:, None])[:, 0].double() - torch.log(sumexp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=608)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeat", type=int, default=6)
    args = ap.parse_args()
    torch.manual_seed(0)
    logits = torch.randn(args.positions, args.vocab) * 4
    targets = torch.randint(0, args.vocab, (args.positions,))
    exact = torch.log_softmax(logits.double(), dim=-1).gather(1, targets[:, None])[:, 0]

    work = torch.empty_like(logits)  # one buffer, reused, as the scorer's head buffer is

    def run(fn) -> tuple[float, torch.Tensor]:
        work.copy_(logits)  # the function may overwrite its input, as the scorer lets it
        t = time.perf_counter()
        out = torch.cat([fn(work[a : a + SOFTMAX_ROWS], targets[a : a + SOFTMAX_ROWS])
                         for a in range(0, args.positions, SOFTMAX_ROWS)])
        return time.perf_counter() - t, out

    fns = {"float64 sum (previous)": float64_sum, "float32 cascade sum (now)": _target_logprobs}
    best = {name: float("inf") for name in fns}
    errors = {}
    for _ in range(args.repeat):  # interleaved: this VM's speed drifts
        for name, fn in fns.items():
            seconds, out = run(fn)
            best[name] = min(best[name], seconds)
            errors[name] = (out - exact).abs()
    print(f"{args.positions} positions x {args.vocab} vocab, slices of {SOFTMAX_ROWS}, "
          f"torch threads {torch.get_num_threads()}, best of {args.repeat}")
    print("| variant | ms | max abs error per token | mean abs error |")
    print("|---|---:|---:|---:|")
    for name in fns:
        print(f"| {name} | {best[name] * 1e3:.1f} | {errors[name].max():.2e} | {errors[name].mean():.2e} |")


if __name__ == "__main__":
    main()

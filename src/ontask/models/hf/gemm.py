"""The exact fp32 GEMM paths torch offers on a CPU, and which one a CPU should use.

- `default`: torch's linear, which calls MKL's SGEMM (torch's x86 wheels are built with
  MKL). On Intel CPUs this is the fastest exact path on the scorer's shapes (measured by
  `benchmarks/bench_scoring.py`, which times every path on the model's own shapes).
- `onednn`: oneDNN's linear on weights reordered once into its blocked layout, residual
  add fused. Its kernels follow oneDNN's own CPU dispatch, which is what AMD CPUs need:
  there MKL dispatches a generic, much slower SGEMM (measured on a Zen 5 with AVX-512:
  145-210 GFLOP/s through MKL, 340-360 through oneDNN, on the same shapes).

MKL's packed GEMM (`_mkl_linear`) is left out: torch uses the packed weights only when the
row count equals the one they were packed for, and scoring batches vary in rows.

`pick_gemm` follows the CPU's vendor, a fact of the machine, so the choice (and every
float) is the same on every run there; a timing-based pick could flip between runs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

PATHS = ("default", "onednn")


@lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """`GenuineIntel`, `AuthenticAMD`, ... from /proc/cpuinfo ("" where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def onednn_available() -> bool:
    """Whether this torch build can run oneDNN's linear (a build without it lacks the op)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def pick_gemm(choice: str = "auto") -> str:
    """`choice`, checked; `auto`: the default (MKL) on Intel, oneDNN on other CPUs when present."""
    if choice == "auto":
        return "default" if cpu_vendor() == "GenuineIntel" or not onednn_available() else "onednn"
    if choice not in PATHS:
        raise ValueError(f"unknown gemm '{choice}': use auto, {', '.join(PATHS)}")
    if choice == "onednn" and not onednn_available():
        raise ValueError("gemm onednn: this torch build has no oneDNN linear (use gemm default)")
    return choice


class Linear:
    """y = x @ W.T + b (+ residual) on `path`, weights prepared once; inputs of any leading shape.

    With a residual (and no bias) the default path adds into `residual` in place and
    returns it: the residual stream is the forward's own tensor, and writing it in place
    saves a copy of it per GEMM."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, path: str) -> None:
        self.path, self.weight, self.bias = path, weight.detach().contiguous(), bias
        self.out = weight.shape[0]
        if path == "onednn":
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
        r2 = residual.reshape(-1, self.out) if residual is not None else None
        if self.path == "onednn":
            if r2 is not None and self.bias is None:
                y = torch.ops.mkldnn._linear_pointwise.binary(x2, r2, self.packed, None, "add")
            else:
                y = torch.ops.mkldnn._linear_pointwise(x2, self.packed, self.bias, "none", [], "")
                if r2 is not None:
                    y.add_(r2)
        elif r2 is not None and self.bias is None:  # accumulate into the residual stream itself (beta = 1)
            return residual.view(-1, self.out).addmm_(x2, self.weight.t()).view(*lead, self.out)
        elif r2 is not None:
            y = torch.addmm(r2 + self.bias, x2, self.weight.t())
        else:
            y = F.linear(x2, self.weight, self.bias)
        return y.view(*lead, self.out)

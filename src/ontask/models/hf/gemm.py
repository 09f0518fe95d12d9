"""The exact fp32 GEMM paths torch offers on a CPU, and which one a CPU should use.

- `default`: torch's linear, which calls MKL's SGEMM (torch's x86 wheels are built with
  MKL); for torch builds without oneDNN. `benchmarks/bench_scoring.py` times every path
  on the model's own shapes.
- `onednn`: oneDNN's linear on weights reordered once into its blocked layout, residual
  add fused. Its kernels follow oneDNN's own CPU dispatch, which is what AMD CPUs need:
  there MKL dispatches a generic, much slower SGEMM (measured on a Zen 5 with AVX-512:
  145-210 GFLOP/s through MKL, 340-360 through oneDNN, on the same shapes).

MKL's packed GEMM (`_mkl_linear`) is left out: torch uses the packed weights only when the
row count equals the one they were packed for, and scoring batches vary in rows.

`pick_gemm` follows facts of the machine and of the use, not a start-up timing, so the
choice (and every float) is the same on every run there:
- many-row products (scoring): the default on Intel CPUs, oneDNN elsewhere. On Intel the
  two tie on speed (Xeon with AVX-512 and AMX, 2 cores, the scorer's shapes: 433 vs 434
  GFLOP/s flop-weighted; 948-954 vs 954-959 tokens/s end to end), and MKL's rounding is
  the one the exactness tests were held to (SmolLM2 against float64, 8 passes: at most
  7.2e-5 per pass through MKL, 1.0e-4 through oneDNN: luck of rounding, but at the bound);
- decoding (`decoding=True`): oneDNN wherever torch has it. A step multiplies a few rows
  by every weight; MKL repacks each weight on every call and streams them at about half
  the memory bandwidth, where oneDNN's prepacked weights do better (same Xeon, 8 rows:
  gate+up 8.1 -> 12.5 GB/s, the vocabulary head 6.7 -> 18.1 GB/s; a decoding step of
  SmolLM2-135M 80 -> 62 ms). Except on one to three rows on Intel, where MKL's
  matrix-vector kernels win (`decode.FusedDecoder`'s `few_rows`). A model that both
  scores and generates in one process holds one fused copy of its weights per path.
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


def pick_gemm(choice: str = "auto", *, decoding: bool = False) -> str:
    """`choice`, checked; `auto`: oneDNN where torch has it, except for scoring on Intel CPUs
    (the default there), as the module's notes say why."""
    if choice == "auto":
        if not onednn_available() or (cpu_vendor() == "GenuineIntel" and not decoding):
            return "default"
        return "onednn"
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
        self.path, self.bias = path, bias
        self.out_features, self.in_features = weight.shape  # as nn.Linear names them
        self.weight: torch.Tensor | None = weight.detach().contiguous()
        if path == "onednn":  # only the packed copy is read: the plain one is not kept
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
            self.weight = None

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
        r2 = residual.reshape(-1, self.out_features) if residual is not None else None
        if self.path == "onednn":
            if r2 is not None and self.bias is None:
                y = torch.ops.mkldnn._linear_pointwise.binary(x2, r2, self.packed, None, "add")
            else:
                y = torch.ops.mkldnn._linear_pointwise(x2, self.packed, self.bias, "none", [], "")
                if r2 is not None:
                    y.add_(r2)
        elif r2 is not None and self.bias is None:  # accumulate into the residual stream itself (beta = 1)
            return residual.view(-1, self.out_features).addmm_(x2, self.weight.t()).view(*lead, self.out_features)
        elif r2 is not None:
            y = torch.addmm(r2 + self.bias, x2, self.weight.t())
        else:
            y = F.linear(x2, self.weight, self.bias)
        return y.view(*lead, self.out_features)

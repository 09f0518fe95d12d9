"""Local transformers weights: where they run (device), in what precision (dtype), loaded once.

Why one loader: a role that both scores and generates with the same local model (the demo
does, with `embedded` everywhere) would otherwise hold two copies of the weights and pay
the load twice. `load_causal_lm` keeps one model per (folder, its files, device, dtype) for the life
of the process, and the scorer and the generator of that model share it (both only read
it: `eval()` mode, no gradients).

Device and dtype follow the user's spec: `device` auto (CUDA when torch sees a GPU, else
CPU), `cpu`, `cuda` or `cuda:N`; `dtype` auto (bf16 on a GPU, fp32 on the CPU, where
exactness is held to 1e-4 of float64), `fp32`, `bf16` or `fp16`. Inputs are moved to the
model's device by the scorer and the generator (`model_device`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

DTYPES = ("auto", "fp32", "bf16", "fp16")
# The spec options every local transformers provider (embedded, hf:) takes.
LOCAL_OPTIONS = frozenset({"device", "dtype", "batch_tokens", "batch_size", "max_length", "kernels", "gemm"})
_LOADED: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


def resolve_device(device: str | None) -> str:
    """`auto`/None -> "cuda" when torch sees a GPU, else "cpu"; `cuda:N` checked against the GPUs present."""
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device}: torch sees no CUDA GPU here (use device cpu or auto)")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return name
    raise ValueError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N")


def resolve_dtype(dtype: str | None, device: str) -> Any:
    """The torch dtype for `dtype` on `device` (auto: bf16 on a GPU, fp32 on the CPU)."""
    import torch

    name = (dtype or "auto").strip().lower()
    if name not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    if name == "auto":
        name = "bf16" if device.startswith("cuda") else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_causal_lm(path: Path, *, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of the local folder `path` on `device` in `dtype`, shared per process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, where)
    folder = Path(path).resolve()
    # The files' sizes and times are part of the key: a folder rewritten in place is loaded again.
    stamp = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file()))
    key = (str(folder), where, str(torch_dtype), stamp)
    with _LOCK:
        if key not in _LOADED:
            if where == "cpu":
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
            else:  # straight onto the GPU, not through a second copy in host memory
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, device_map=where)
            _LOADED[key] = model.eval()
        model = _LOADED[key]
    # Each caller gets a tokenizer of its own (cheap to load): callers may set attributes on it.
    return model, AutoTokenizer.from_pretrained(path)


def model_device(model: Any) -> Any:
    """The device a model's weights are on (where its inputs must go)."""
    return next(model.parameters()).device


def forget_loaded() -> None:
    """Drop the shared models (tests that build many; the next load reads the folder again)."""
    with _LOCK:
        _LOADED.clear()

"""`hf:PATH`: a local transformers folder (never downloaded), on a GPU when there is one."""

from __future__ import annotations

from typing import Any

from ..local.weights import LOCAL_OPTIONS
from ..spec import ModelSpec, take


class HFProvider:
    name = "hf"
    options = LOCAL_OPTIONS

    def scorer(self, spec: ModelSpec, **settings: Any) -> Any:
        from .scorer import load_hf_scorer

        return load_hf_scorer(spec.target, **take(spec, settings, "device", "dtype", "batch_tokens", "share_prefix",
                                                   "max_length", "kernels", "gemm"))

    def generator(self, spec: ModelSpec, **settings: Any) -> Any:
        from .generator import load_hf_generator

        return load_hf_generator(spec.target, **take(spec, settings, "device", "dtype", "batch_size", "max_length",
                                                      "repetition_penalty", "kernels", "gemm"))

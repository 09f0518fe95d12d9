"""`vllm:PATH`: vLLM's in-process engine on a GPU (optional extra `ontask[vllm]`)."""

from __future__ import annotations

from typing import Any

from ..spec import ModelSpec, take

# vLLM's names for the spec's dtypes
VLLM_DTYPES = {"auto": "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class VLLMProvider:
    name = "vllm"
    options = frozenset({"dtype", "max_length"})

    def scorer(self, spec: ModelSpec, **settings: Any) -> Any:
        from .scorer import load_vllm_scorer  # imports vllm itself only when the engine is built

        return load_vllm_scorer(spec.target, **_vllm(take(spec, settings, "max_length", "dtype", "gpu_memory_utilization")))

    def generator(self, spec: ModelSpec, **settings: Any) -> Any:
        from .generator import load_vllm_generator

        return load_vllm_generator(spec.target, **_vllm(take(spec, settings, "max_length", "dtype", "gpu_memory_utilization",
                                                              "repetition_penalty")))


def _vllm(kw: dict[str, Any]) -> dict[str, Any]:
    if "dtype" in kw:
        kw["dtype"] = VLLM_DTYPES.get(kw["dtype"], kw["dtype"])
    return kw

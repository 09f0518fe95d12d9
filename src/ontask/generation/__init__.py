"""Generation backends: `load_generator("embedded" | "hf:PATH" | "openai:MODEL" | "vllm:PATH")` picks one."""

from __future__ import annotations

from typing import Any

from .base import (
    ChatOutcome,
    ChatRequest,
    ChatResult,
    ChoiceOutcome,
    ChoiceRequest,
    ChoiceResult,
    GenError,
    Generator,
    Usage,
)
from .cached import CachedGenerator


def load_generator(spec: str, **options: Any) -> Generator:
    """Build the generator named by a model string (product.md, "Models and roles")."""
    if spec == "embedded":
        from .hf import load_embedded_generator

        return load_embedded_generator(**_only(options, "batch_size", "max_length", "repetition_penalty"))
    if spec.startswith("hf:"):
        from .hf import load_hf_generator

        return load_hf_generator(spec[3:], **_only(options, "batch_size", "max_length", "repetition_penalty"))
    if spec.startswith("openai:"):
        from .openai_chat import load_openai_generator

        return load_openai_generator(spec[len("openai:"):], **_only(options, "base_url", "concurrency", "timeout", "structured", "max_reasks", "retry", "rate"))
    if spec.startswith("vllm:"):
        from .vllm import load_vllm_generator  # imports vllm itself only when the engine is built

        return load_vllm_generator(spec[len("vllm:"):], **_only(options, "max_length", "dtype", "gpu_memory_utilization", "repetition_penalty"))
    raise ValueError(f"unknown model '{spec}': use embedded, hf:PATH, openai:MODEL or vllm:PATH")


def _only(options: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in keys and v is not None}


__all__ = [
    "CachedGenerator", "ChatOutcome", "ChatRequest", "ChatResult", "ChoiceOutcome", "ChoiceRequest",
    "ChoiceResult", "GenError", "Generator", "Usage", "load_generator",
]

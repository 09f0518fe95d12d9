"""Model backends. `load_scorer("embedded" | "hf:PATH" | "openai:MODEL" | "vllm:PATH")` picks one."""

from __future__ import annotations

from typing import Any

from .base import PassError, PassOutcome, PassRequest, PassResult, Scorer, build_user_turn


def load_scorer(spec: str, **options: Any) -> Scorer:
    """Build the scorer named by a model string (see product.md, "Models and roles")."""
    if spec == "embedded":
        from .embedded import load_embedded_scorer

        return load_embedded_scorer(**_only(options, "batch_tokens", "share_prefix", "max_length"))
    if spec.startswith("hf:"):
        from .hf import load_hf_scorer

        return load_hf_scorer(spec[3:], **_only(options, "batch_tokens", "share_prefix", "max_length"))
    if spec.startswith("openai:"):
        from .openai_server import load_server_scorer

        return load_server_scorer(spec[len("openai:"):], **_only(options, "base_url", "template", "concurrency", "mode", "max_length", "timeout", "max_retries", "tokenizer"))
    if spec.startswith("vllm:"):
        from .vllm import load_vllm_scorer  # imports vllm itself only when the engine is built

        return load_vllm_scorer(spec[len("vllm:"):], **_only(options, "max_length", "dtype", "gpu_memory_utilization"))
    raise ValueError(f"unknown model '{spec}': use embedded, hf:PATH, openai:MODEL or vllm:PATH")


def _only(options: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in keys and v is not None}


__all__ = ["PassError", "PassOutcome", "PassRequest", "PassResult", "Scorer", "build_user_turn", "load_scorer"]

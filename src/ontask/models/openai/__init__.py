"""`openai:MODEL`: any OpenAI-compatible server (vLLM, llama.cpp, Ollama, OpenAI, ...).

Both capabilities go over the shared transport (endpoint resolution, rate control, retry
policy in `models/transport/`): chat on `/chat/completions`, scoring on `/completions` with
echoed or prompt log-probs, in the served model's own chat template."""

from __future__ import annotations

import os
from typing import Any

from ..spec import ModelSpec, take

REMOTE_OPTIONS = frozenset({"base_url", "api_key_env", "template", "mode", "concurrency", "timeout", "max_retries",
                            "structured", "max_length", "batch"})


class OpenAIProvider:
    name = "openai"
    options = REMOTE_OPTIONS

    def scorer(self, spec: ModelSpec, **settings: Any) -> Any:
        from .scorer import load_server_scorer

        if spec.structured is not None:
            raise ValueError(f"{spec.spec}: option structured is for chat roles, not the scorer")
        kw = take(spec, settings, "base_url", "template", "concurrency", "mode", "max_length", "timeout", "max_retries",
                  "tokenizer", "retry", "rate", "batch")
        return load_server_scorer(spec.target, api_key=api_key(spec), **kw)

    def generator(self, spec: ModelSpec, **settings: Any) -> Any:
        from .chat import load_openai_generator

        for scoring_only in ("template", "mode", "max_length"):
            if getattr(spec, scoring_only) is not None:
                raise ValueError(f"{spec.spec}: option {scoring_only} is for scoring through a server, not for chat "
                                 "(the server applies its own template to chat)")
        kw = take(spec, settings, "base_url", "concurrency", "timeout", "structured", "max_reasks", "retry", "rate",
                  "batch")
        if spec.max_retries is not None:
            kw["retry"] = {**_as_dict(kw.get("retry")), "max_attempts": spec.max_retries + 1}
        return load_openai_generator(spec.target, api_key=api_key(spec), **kw)


def api_key(spec: ModelSpec) -> str | None:
    """The key from the variable `api_key_env` names (an error when it is unset), else None:
    the transport then falls back to ONTASK_API_KEY / OPENAI_API_KEY."""
    if spec.api_key_env is None:
        return None
    value = os.environ.get(spec.api_key_env)
    if not value:
        raise ValueError(f"{spec.spec}: api_key_env names {spec.api_key_env}, which is not set in the environment")
    return value


def _as_dict(policy: Any) -> dict[str, Any]:
    if policy is None:
        return {}
    return policy.model_dump() if hasattr(policy, "model_dump") else dict(policy)

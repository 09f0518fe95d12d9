"""Models: one package per provider (`embedded`, `hf`, `vllm`, `openai`), each giving both
capabilities, scoring and chat (`base.py`), over shared pieces: `transport/` (endpoint,
rate control, retry: every remote provider), `local/` (chat templates, the exact
prompt/output token split, shared weights on a device). `registry.py` maps a provider name
to its class; `spec.py` is the typed spec a user writes per role; `cached.py` puts every
generation call through the result cache.

`load_scorer(spec)` / `load_generator(spec)` take `embedded`, `hf:PATH`, `openai:MODEL`,
`vllm:PATH` (or a mapping / `ModelSpec` with options) and return the model.
"""

from __future__ import annotations

from .base import (
    ChatOutcome,
    ChatRequest,
    ChatResult,
    ChoiceOutcome,
    ChoiceRequest,
    ChoiceResult,
    GenError,
    Generator,
    PassError,
    PassOutcome,
    PassRequest,
    PassResult,
    Scorer,
    Usage,
    build_user_turn,
)
from .cached import CachedGenerator
from .registry import check_spec, load_generator, load_scorer, provider_for, register, unregister
from .spec import ModelSpec, parse_spec

__all__ = [
    "CachedGenerator", "ChatOutcome", "ChatRequest", "ChatResult", "ChoiceOutcome", "ChoiceRequest", "ChoiceResult",
    "GenError", "Generator", "ModelSpec", "PassError", "PassOutcome", "PassRequest", "PassResult", "Scorer", "Usage",
    "build_user_turn", "check_spec", "load_generator", "load_scorer", "parse_spec", "provider_for", "register",
    "unregister",
]

"""Provider name -> provider class: the one place that knows which providers exist.

A provider is one package under `models/` (or any module) with a class that has a `name`,
the set of `ModelSpec` options it takes, and two constructors, `scorer(spec, **settings)`
and `generator(spec, **settings)`; adding one is that module plus one line in `PROVIDERS`
(or `register(...)` from outside, as the tests do). The classes are imported lazily, so
naming `openai:` never imports torch and naming `hf:` never imports an HTTP stack.

`settings` are the run's defaults for knobs that are not per-model options (share_prefix,
repetition_penalty, retry and rate policies, ...); each provider takes what applies to it.
An option the spec sets that the provider does not take is an error, never dropped.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from .base import Generator, Scorer
from .spec import ModelSpec, parse_spec

PROVIDERS: dict[str, str] = {
    "embedded": "ontask.models.embedded:EmbeddedProvider",
    "hf": "ontask.models.hf:HFProvider",
    "openai": "ontask.models.openai:OpenAIProvider",
    "vllm": "ontask.models.vllm:VLLMProvider",
}
FORMS = {"embedded": "embedded", "hf": "hf:PATH", "openai": "openai:MODEL", "vllm": "vllm:PATH"}  # for messages
_REGISTERED: dict[str, type] = {}


class Provider(Protocol):
    """What a provider class gives (see the module docstring)."""

    name: str
    options: frozenset[str]

    def scorer(self, spec: ModelSpec, **settings: Any) -> Scorer: ...

    def generator(self, spec: ModelSpec, **settings: Any) -> Generator: ...


def register(name: str, provider: type) -> None:
    """Add (or replace) a provider under `name`: `NAME:TARGET` specs then load through it."""
    _REGISTERED[name] = provider


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def provider_names() -> list[str]:
    return sorted({*PROVIDERS, *_REGISTERED})


def provider_class(name: str) -> type | None:
    """The class registered under `name` (imported on first use), or None."""
    cls = _REGISTERED.get(name)
    if cls is None and name in PROVIDERS:
        module, _, attr = PROVIDERS[name].partition(":")
        cls = getattr(importlib.import_module(module), attr)
    return cls


ACCOUNTING_OPTIONS = frozenset({"input_price", "output_price", "batch_price_factor"})  # every provider: they change no result


def provider_for(spec: ModelSpec) -> Provider:
    """The provider instance for `spec`, with the spec's options checked against what it takes."""
    name = spec.provider
    cls = provider_class(name)
    if cls is None:
        forms = ", ".join(FORMS.get(n, f"{n}:TARGET") for n in provider_names())
        raise ValueError(f"unknown model '{spec.spec}': use one of {forms}")
    provider = cls()
    extra = sorted(set(spec.options()) - set(provider.options) - ACCOUNTING_OPTIONS)
    if extra:
        raise ValueError(f"{spec.spec}: option(s) {', '.join(extra)} do not apply to {name} models "
                         f"(they take: {', '.join(sorted(provider.options)) or 'no options'})")
    return provider


def check_spec(value: "str | dict[str, Any] | ModelSpec", where: str = "model") -> ModelSpec:
    """Parse and check a spec without loading anything (for validating settings up front)."""
    spec = parse_spec(value, where)
    try:
        provider_for(spec)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return spec


def load_scorer(spec: "str | dict[str, Any] | ModelSpec", **settings: Any) -> Scorer:
    """The scorer named by `spec` (a string like `hf:PATH`, a mapping, or a `ModelSpec`)."""
    spec = parse_spec(spec)
    return provider_for(spec).scorer(spec, **settings)


def load_generator(spec: "str | dict[str, Any] | ModelSpec", **settings: Any) -> Generator:
    """The generator named by `spec` (a string like `openai:MODEL`, a mapping, or a `ModelSpec`)."""
    spec = parse_spec(spec)
    return provider_for(spec).generator(spec, **settings)

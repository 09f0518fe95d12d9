"""Every generation call through the content-addressed cache, persisted as it arrives.

`CachedGenerator` wraps any backend. Before a batch it looks every request up (key = the
backend's fingerprint + everything that changes the answer); identical requests in one
batch are sent once; each answer the backend finishes is committed to SQLite at once
from the `on_result` callback, so a run killed half-way has paid for nothing it must pay
for again. Failures are not cached: a rerun retries them (they are usually transient).

It also keeps the per-role bookkeeping run.json reports: calls, cache hits, failures and
token usage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Sequence

from ..cache import ResultCache, cache_key
from .base import (
    ChatOutcome,
    ChatRequest,
    ChatResult,
    ChoiceOutcome,
    ChoiceRequest,
    ChoiceResult,
    GenError,
    Generator,
    OnChat,
    OnChoice,
    Usage,
)
from .structured import StructuredError, parse_structured


@dataclass
class CallStats:
    requests: int = 0
    cached: int = 0
    sent: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add_usage(self, usage: Usage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


class CachedGenerator:
    """A Generator that answers from the cache first and stores each new answer at once."""

    def __init__(self, inner: Generator, cache: ResultCache | None) -> None:
        self.inner, self.cache = inner, cache
        self.name = inner.name
        self.stats = CallStats()
        self.batches: list[int] = []  # calls sent per chat()/choice_probs() call, in order

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    @property
    def supports_choice_probs(self) -> bool:
        return self.inner.supports_choice_probs

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    # -- chat -------------------------------------------------------------------------
    def chat(self, requests: Sequence[ChatRequest], on_result: OnChat | None = None) -> list[ChatOutcome]:
        keys = [cache_key("chat", self.fingerprint, r.key_parts()) for r in requests]
        by_key = {k: r for k, r in zip(keys, requests)}

        def decode(key: str, blob: bytes) -> ChatResult | None:
            """A stored answer, its JSON validated again by today's schema code (validators
            such as category normalisation may have changed); None = no longer valid."""
            result = _chat_from_bytes(blob)
            model = by_key[key].response_model
            if model is None:
                return result
            try:
                data, repaired = parse_structured(result.text, model)
            except StructuredError:
                return None
            return replace(result, data=data, repaired=repaired)

        return self._run(requests, keys, "chat", self.inner.chat, _chat_to_bytes, decode, on_result)

    def choice_probs(self, requests: Sequence[ChoiceRequest], on_result: OnChoice | None = None) -> list[ChoiceOutcome]:
        keys = [cache_key("choice", self.fingerprint, r.key_parts()) for r in requests]
        return self._run(requests, keys, "choice", self.inner.choice_probs, _choice_to_bytes,
                         lambda key, blob: _choice_from_bytes(blob), on_result)

    def _run(self, requests, keys, kind, call, encode, decode, on_result):
        self.stats.requests += len(requests)
        found = self.cache.get_many(keys) if self.cache else {}
        out: list[Any] = [None] * len(requests)
        waiting: dict[str, list[int]] = {}  # key -> every index asking for it
        decoded = {key: decode(key, blob) for key, blob in found.items()}
        for i, key in enumerate(keys):
            if decoded.get(key) is not None:
                out[i] = decoded[key]
                self.stats.cached += 1
                if on_result:
                    on_result(i, out[i])
            else:
                waiting.setdefault(key, []).append(i)
        if not waiting:
            return out
        todo_keys = list(waiting)
        todo = [requests[waiting[k][0]] for k in todo_keys]
        self.stats.sent += len(todo)
        self.batches.append(len(todo))

        def arrived(j: int, outcome: Any) -> None:
            key = todo_keys[j]
            self.stats.add_usage(outcome.usage)
            if isinstance(outcome, GenError):
                self.stats.failed += 1
            elif self.cache is not None:
                self.cache.put_many(kind, [(key, encode(outcome))])
            for i in waiting[key]:
                out[i] = outcome
                if on_result:
                    on_result(i, outcome)

        results = call(todo, on_result=arrived)
        for j, outcome in enumerate(results):  # backends that ignore on_result still land here
            for i in waiting[todo_keys[j]]:
                if out[i] is None:
                    arrived(j, outcome)
                    break
        return out


def _chat_to_bytes(r: ChatResult) -> bytes:
    return json.dumps({"text": r.text, "data": r.data, "usage": [r.usage.prompt_tokens, r.usage.completion_tokens],
                       "attempts": r.attempts, "repaired": r.repaired, "truncated": r.truncated},
                      ensure_ascii=False).encode()


def _chat_from_bytes(b: bytes) -> ChatResult:
    d = json.loads(b)
    return ChatResult(text=d["text"], data=d["data"], usage=Usage(*d["usage"]), attempts=d["attempts"],
                      cached=True, repaired=d.get("repaired", False), truncated=d.get("truncated", False))


def _choice_to_bytes(r: ChoiceResult) -> bytes:
    return json.dumps({"probs": r.probs, "mass": r.mass, "usage": [r.usage.prompt_tokens, r.usage.completion_tokens]}).encode()


def _choice_from_bytes(b: bytes) -> ChoiceResult:
    d = json.loads(b)
    return ChoiceResult(probs=d["probs"], mass=d["mass"], usage=Usage(*d["usage"]), cached=True)

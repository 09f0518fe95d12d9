"""Every generation call through the content-addressed cache, persisted as it arrives.

`CachedGenerator` wraps any backend. Before a batch it looks every request up (key = the
backend's fingerprint + everything that changes the answer); identical requests in one
batch are sent once; each answer the backend finishes is committed to SQLite at once
from the `on_result` callback, so a run killed half-way has paid for nothing it must pay
for again. Failures are not cached: a rerun retries them (they are usually transient).

It also keeps the per-role bookkeeping run.json reports: calls, cache hits, failures and
token usage, under a lock (a backend may report answers from a thread of its own).
`achat`/`achoice_probs` are the same calls for code on an event loop (server models): the
streaming augment pipeline runs them all on one loop.
"""

from __future__ import annotations

import json
import threading
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
        self._lock = threading.Lock()  # stats and batches, updated from several threads
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
        batch = self._chat_batch(requests, on_result)
        return batch.finish(self.inner.chat(batch.todo, on_result=batch.arrived) if batch.todo else [])

    def choice_probs(self, requests: Sequence[ChoiceRequest], on_result: OnChoice | None = None) -> list[ChoiceOutcome]:
        batch = self._choice_batch(requests, on_result)
        return batch.finish(self.inner.choice_probs(batch.todo, on_result=batch.arrived) if batch.todo else [])

    async def achat(self, requests: Sequence[ChatRequest], on_result: OnChat | None = None) -> list[ChatOutcome]:
        """`chat` on an event loop, over the backend's `achat` (server models)."""
        batch = self._chat_batch(requests, on_result)
        return batch.finish(await self.inner.achat(batch.todo, on_result=batch.arrived) if batch.todo else [])

    async def achoice_probs(self, requests: Sequence[ChoiceRequest],
                            on_result: OnChoice | None = None) -> list[ChoiceOutcome]:
        batch = self._choice_batch(requests, on_result)
        return batch.finish(await self.inner.achoice_probs(batch.todo, on_result=batch.arrived) if batch.todo else [])

    def _chat_batch(self, requests: Sequence[ChatRequest], on_result: OnChat | None) -> "_Batch":
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

        return _Batch(self, requests, keys, "chat", _chat_to_bytes, decode, on_result)

    def _choice_batch(self, requests: Sequence[ChoiceRequest], on_result: OnChoice | None) -> "_Batch":
        keys = [cache_key("choice", self.fingerprint, r.key_parts()) for r in requests]
        return _Batch(self, requests, keys, "choice", _choice_to_bytes, lambda key, blob: _choice_from_bytes(blob),
                      on_result)


class _Batch:
    """One chat()/choice_probs() call through the cache: looked up, counted and the hits
    reported on creation; `todo` (each distinct missing request once) goes to the backend,
    whose answers come back through `arrived` (stored at once) and `finish`."""

    def __init__(self, owner: CachedGenerator, requests, keys, kind, encode, decode, on_result) -> None:
        self.owner, self.keys, self.kind, self.encode, self.on_result = owner, keys, kind, encode, on_result
        cache = owner.cache
        found = cache.get_many(keys) if cache else {}
        self.out: list[Any] = [None] * len(requests)
        self.waiting: dict[str, list[int]] = {}  # key -> every index asking for it
        decoded = {key: decode(key, blob) for key, blob in found.items()}
        hits = []
        for i, key in enumerate(keys):
            if decoded.get(key) is not None:
                self.out[i] = decoded[key]
                hits.append(i)
            else:
                self.waiting.setdefault(key, []).append(i)
        self.todo_keys = list(self.waiting)
        self.todo = [requests[self.waiting[k][0]] for k in self.todo_keys]
        with owner._lock:
            owner.stats.requests += len(requests)
            owner.stats.cached += len(hits)
            if self.todo:
                owner.stats.sent += len(self.todo)
                owner.batches.append(len(self.todo))
        if on_result:
            for i in hits:
                on_result(i, self.out[i])

    def arrived(self, j: int, outcome: Any) -> None:
        key, owner = self.todo_keys[j], self.owner
        failed = isinstance(outcome, GenError)
        with owner._lock:
            owner.stats.add_usage(outcome.usage)
            owner.stats.failed += failed
        if not failed and owner.cache is not None:
            owner.cache.put_many(self.kind, [(key, self.encode(outcome))])
        for i in self.waiting[key]:
            self.out[i] = outcome
            if self.on_result:
                self.on_result(i, outcome)

    def finish(self, results: Sequence[Any]) -> list[Any]:
        for j, outcome in enumerate(results):  # backends that ignore on_result still land here
            for i in self.waiting[self.todo_keys[j]]:
                if self.out[i] is None:
                    self.arrived(j, outcome)
                    break
        return self.out


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

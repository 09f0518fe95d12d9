"""Generation against any OpenAI-compatible chat server (vLLM, Ollama, llama.cpp, OpenAI).

Why this shape:

- HTTP is the shared stack (`transport/http.py`, aiohttp): one pooled session per call, a
  connection per slot, the JSON body posted as bytes and the answer read raw. (The `openai` SDK was measured to spend
  ~0.8 ms of CPU building each request, a third of the client's time at 1,000 calls at
  64 in flight on 2 cores; its retries and typed objects were unused here anyway.)
- Retries are our policy: `tenacity` retries 429, 408, 5xx, timeouts, connection errors and *broken bodies*
  (an HTTP 200 whose body is not JSON or has no `choices[0].message`, which proxies and
  overloaded servers do send). Waits are exponential with jitter and never shorter than
  the server's `Retry-After` / `retry-after-ms`. Other 4xx fail at once. The retry
  policy is kept apart from rate control (`rate.RateController`: AIMD concurrency,
  Retry-After pauses, token and request budgets), which admits every HTTP attempt.
- Bodies are parsed here, so a broken body is seen as such (and retried) instead of
  surfacing as an opaque validation error.
- Structured answers: the JSON schema goes in `response_format` (servers that constrain
  decoding honour it); a server that rejects it with a 400 makes the generator switch to
  putting the schema in a system instruction for the rest of its life ("auto"). Answers
  are parsed with `parse_structured`; an invalid or truncated one is re-asked with the
  problem spelled out, and after `max_reasks` it is a `GenError` carrying that problem.
- `chat`/`choice_probs` are synchronous (the pipeline is), run their own event loop (in
  a helper thread when called from inside a running loop, as `ServerScorer` does) and
  fire `on_result` from that loop the moment each outcome is final.
- `achat`/`achoice_probs` are the same calls for code already on an event loop; inside
  `async with gen.shared()` every such call on that loop shares one HTTP session and one
  rate controller, so together they keep at most `concurrency` requests in flight, as one
  call does (the streaming augment pipeline overlaps its steps this way, all on one loop:
  no thread hops between an answer and the request it unlocks).

The API key is never part of the identity, `describe()`, logs or error reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Sequence

import aiohttp
from pydantic import BaseModel

from ..transport.endpoint import public_url, resolve_api_key, resolve_base_url, run_sync, scrub_key
from .batch import Batcher, BatchFailure, default_log
from .batch import batch_settings as to_batch_settings
from ..base import (
    ChatOutcome,
    ChatRequest,
    ChatResult,
    ChoiceOutcome,
    ChoiceRequest,
    ChoiceResult,
    GenError,
    OnChat,
    OnChoice,
    Usage,
    generation_fingerprint_of as fingerprint_of,
    json_schema_of,
    renormalise_choices,
)
from ..transport.http import TimedOut, Unreachable, error_message, post, session
from ..transport.rate import RateControl, RateController, RateState, estimate_tokens, new_state
from ..transport.retry import Failure as _Failure
from ..transport.retry import RetryPolicy, retry_after_seconds, retrying
from ..structured import StructuredError, parse_structured

log = logging.getLogger(__name__)

StructuredMode = Literal["auto", "response_format", "prompt"]
STRUCTURED_MODES: tuple[str, ...] = ("auto", "response_format", "prompt")
# How a JSON schema reaches the server, in the order "auto" tries them (see _send_structured).
STRUCTURED_FORMS: tuple[str, ...] = ("response_format", "json_object", "prompt")


def _refuses_form(exc: "_Failure") -> bool:
    """Whether a failed probe refused the way the schema was sent: any 400 (vLLM, most), or a
    500 that says so (llama-cpp-python validates `response_format` and answers 500 naming it).
    Any other 500 is a fault: it is retried with the same form, never taken for a refusal."""
    if exc.status == 400:
        return True
    return exc.status == 500 and ("response_format" in exc.reason or "json_schema" in exc.reason)
TOP_LOGPROBS = 20  # the most OpenAI and vLLM (default max_logprobs) return


class OpenAIChatGenerator:
    """A `Generator` over an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 64,
        timeout: float = 60.0,
        retry: RetryPolicy | dict[str, Any] | None = None,
        rate: RateControl | dict[str, Any] | None = None,
        structured: StructuredMode = "auto",
        max_reasks: int = 2,
        batch: bool = False,
        batch_settings: Any = None,
        batch_log: str | os.PathLike | None = None,
    ) -> None:
        if structured not in STRUCTURED_MODES:
            raise ValueError(f"unknown structured mode '{structured}': use one of {', '.join(STRUCTURED_MODES)}")
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = resolve_base_url(base_url)
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.retry = retry if isinstance(retry, RetryPolicy) else RetryPolicy(**(retry or {}))
        self.rate = rate if isinstance(rate, RateControl) else RateControl(**(rate or {}))
        self.rate_state: RateState = new_state(self.rate, self.concurrency)  # learned limit, across calls
        self.structured: StructuredMode = structured
        self.max_reasks = max(0, int(max_reasks))
        self._api_key = resolve_api_key(api_key)
        # "auto" starts with response_format and may fall back to the prompt for good.
        self._schema_in: str = "prompt" if structured == "prompt" else "response_format"
        self._form_confirmed = structured != "auto"  # auto: until a form is answered, refusals move to the next
        self._identity = {"backend": "openai-chat", "server_model": model,
                          "base_url": public_url(self.base_url), "structured": structured}
        self._fingerprint = fingerprint_of(self._identity)
        self._shared: _Call | None = None  # open while `async with shared()`, on that loop
        # Batch mode: the same requests, answers and re-asks, sent through the provider's
        # batch API (batch.py) instead of one request each; the answers are the same, so the
        # fingerprint (and the cache) is too. The log of batches lives beside the result cache.
        self.batch = bool(batch)
        self.batch_settings = to_batch_settings(batch_settings)
        self.batch_log = Path(batch_log) if batch_log else default_log(self._fingerprint)

    # -- identity -----------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def supports_choice_probs(self) -> bool:
        return True  # the server's job: one without logprobs answers with GenErrors

    @property
    def schema_in(self) -> str:
        """Where the schema goes now: "response_format" (json_schema), "json_object" (with the
        schema, llama.cpp's form) or "prompt" (configured, or after a fallback)."""
        return self._schema_in

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self._fingerprint, **self._identity,
                "schema_in": self._schema_in, "concurrency": self.concurrency, "timeout": self.timeout,
                "retry": self.retry.model_dump(), "rate": self.rate.model_dump(), "max_reasks": self.max_reasks,
                **({"batch": {"log": str(self.batch_log), **self.batch_settings.model_dump()}} if self.batch else {})}

    # -- public calls -------------------------------------------------------------------
    def chat(self, requests: Sequence[ChatRequest], on_result: OnChat | None = None) -> list[ChatOutcome]:
        return self._run_sync(list(requests), self._chat_one, on_result)

    def choice_probs(self, requests: Sequence[ChoiceRequest], on_result: OnChoice | None = None) -> list[ChoiceOutcome]:
        return self._run_sync(list(requests), self._choice_one, on_result)

    async def achat(self, requests: Sequence[ChatRequest], on_result: OnChat | None = None) -> list[ChatOutcome]:
        """`chat` for a caller on an event loop (shares the session of an open `shared()`)."""
        return await self._run_all(list(requests), self._chat_one, on_result, self._shared)

    async def achoice_probs(self, requests: Sequence[ChoiceRequest],
                            on_result: OnChoice | None = None) -> list[ChoiceOutcome]:
        return await self._run_all(list(requests), self._choice_one, on_result, self._shared)

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """While open, every `achat()`/`achoice_probs()` on this event loop shares one HTTP
        session and one rate controller: one in-flight limit for the model, however many
        calls overlap. Without it each call has its own controller, so overlapping calls
        would each be allowed `concurrency`. Open it once per generator."""
        if self._shared is not None:
            raise RuntimeError(f"{self.name}: shared() is already open")
        self._shared = self._new_call()  # the session belongs to the loop that made it: this one
        try:
            yield
        finally:
            call, self._shared = self._shared, None
            await call.client.close()

    # -- driving ------------------------------------------------------------------------
    def _run_sync(self, requests: list[Any], one: Callable[..., Awaitable[Any]], on_result: Callable[[int, Any], None] | None) -> list[Any]:
        if not requests:
            return []
        return run_sync(lambda: self._run_all(requests, one, on_result))

    def _new_call(self) -> "_Call":
        # A connection per slot, so no admitted request waits for a connection.
        return _Call(session(self._api_key, self.concurrency), f"{self.base_url.rstrip('/')}/chat/completions",
                     RateController(self.rate, self.concurrency, self.rate_state),
                     self._batcher() if self.batch else None)

    def _batcher(self) -> Batcher:
        return Batcher.for_server(self.base_url, self._api_key, "/v1/chat/completions", self.model, self.batch_log,
                                  self.batch_settings, timeout=self.timeout, retry=self.retry)

    async def _run_all(self, requests: list[Any], one: Callable[..., Awaitable[Any]],
                       on_result: Callable[[int, Any], None] | None, shared: "_Call | None" = None) -> list[Any]:
        # One session per call unless shared(): an aiohttp session belongs to the event loop that made it.
        if not requests:
            return []
        call = shared or self._new_call()
        results: list[Any] = [None] * len(requests)
        pending = iter(range(len(requests)))

        async def worker() -> None:
            for i in pending:  # shared iterator: each index is taken by exactly one worker
                outcome = await self._guarded(one, call, requests[i])
                results[i] = outcome
                if on_result is not None:
                    on_result(i, outcome)

        # Twice as many workers as slots, so requests waiting out a backoff leave no slot idle;
        # in batch mode every request at once: the batch, not the connection, is the unit.
        workers = len(requests) if self.batch else min(len(requests), 2 * self.concurrency)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(worker())
        except ExceptionGroup as eg:  # only on_result can raise here: surface its own error
            raise eg.exceptions[0] from None
        finally:
            if shared is None:
                await call.client.close()
        return results

    async def _guarded(self, one: Callable[..., Awaitable[Any]], call: "_Call", req: Any) -> Any:
        tally = _Tally()
        try:
            return await one(call, req, tally)
        except _Failure as exc:
            return GenError(self._scrub(exc.reason), tally.attempts, tally.usage())
        except Exception as exc:  # a bug or an unforeseen answer: one request fails, not the batch
            log.debug("unexpected error in a chat request", exc_info=True)
            return GenError(self._scrub(f"unexpected error: {type(exc).__name__}: {exc}"), tally.attempts, tally.usage())

    # -- chat ---------------------------------------------------------------------------
    async def _chat_one(self, call: "_Call", req: ChatRequest, tally: "_Tally") -> ChatOutcome:
        if req.response_model is None:
            reply = await self._send(call, self._body(req, req.messages), tally)
            if not reply.content or not reply.content.strip():
                return GenError(f"the server returned an empty answer (finish_reason {reply.finish_reason})",
                                tally.attempts, tally.usage())
            return ChatResult(reply.content, usage=tally.usage(), attempts=tally.attempts,
                              truncated=reply.finish_reason == "length")
        messages = list(req.messages)
        problem = ""
        for _ in range(self.max_reasks + 1):
            reply = await self._send_structured(call, req, messages, tally)
            text = reply.content or ""
            try:
                if reply.finish_reason == "length":
                    raise StructuredError(f"the answer was truncated at the {req.max_tokens}-token limit, "
                                          "so the JSON is incomplete; keep it shorter")
                data, repaired = parse_structured(text, req.response_model)
            except StructuredError as exc:
                problem = str(exc)
            else:
                return ChatResult(text, data=data, usage=tally.usage(), attempts=tally.attempts, repaired=repaired)
            messages += [{"role": "assistant", "content": text},
                         {"role": "user", "content": f"Your answer was not valid: {problem}; reply with only the JSON object"}]
        return GenError(f"no valid {req.response_model.__name__} after {self.max_reasks + 1} answers: {problem}",
                        tally.attempts, tally.usage())

    async def _send_structured(self, call: "_Call", req: ChatRequest, messages: list[dict[str, str]],
                               tally: "_Tally") -> "_Reply":
        """One structured answer, in the form this server takes.

        Servers differ: OpenAI and vLLM take `response_format: json_schema`; llama.cpp's
        servers answer that with HTTP 500 (llama-cpp-python) or 400 and take
        `{"type": "json_object", "schema": ...}` instead; others take neither. In "auto",
        until a form has worked, each form is tried once without retries (a refusal is not
        a fault to retry) and the next one on a 4xx/5xx refusal: json_schema, json_object
        with the schema, then the schema in the prompt. The first form that is answered is
        kept for the rest of the generator's life."""
        model = req.response_model
        assert model is not None
        if self.structured != "auto" or self._form_confirmed:
            return await self._send(call, self._structured_body(self._schema_in, req, messages), tally)
        forms = STRUCTURED_FORMS[STRUCTURED_FORMS.index(self._schema_in):]
        refusals: list[str] = []
        started = tally.attempts
        for form in forms:
            body = self._structured_body(form, req, messages)
            if form == "prompt":  # the probes spent part of the request's attempts
                left = max(1, self.retry.max_attempts - (tally.attempts - started))
                reply = await self._send(call, body, tally, self.retry.model_copy(update={"max_attempts": left}), started)
            else:
                try:
                    reply = await self._attempt(call, body, tally)  # once: a refusal moves to the next form
                except _Failure as exc:
                    if not _refuses_form(exc):
                        if not exc.retryable:
                            raise
                        # not about the form: retry as usual, the probes counted as attempts
                        left = max(1, self.retry.max_attempts - (tally.attempts - started))
                        return await self._send(call, body, tally, self.retry.model_copy(update={"max_attempts": left}),
                                                started)
                    refusals.append(f"{form}: {self._scrub(exc.reason)}")
                    continue
            if form != self._schema_in or not self._form_confirmed:
                if refusals:
                    log.warning("%s refused %s; sending JSON schemas as %s from now on", public_url(self.base_url),
                                "; ".join(refusals), form)
                self._schema_in, self._form_confirmed = form, True
            return reply
        raise AssertionError("unreachable: the prompt form is always tried last")

    def _structured_body(self, form: str, req: ChatRequest, messages: list[dict[str, str]]) -> dict[str, Any]:
        model = req.response_model
        assert model is not None
        if form == "prompt":
            return self._body(req, _with_instruction(messages, _schema_instruction(model)))
        if form == "json_object":
            return self._body(req, messages, response_format={"type": "json_object", "schema": json_schema_of(model)})
        return self._body(req, messages, response_format=_response_format(model))

    def _body(self, req: ChatRequest, messages: Sequence[dict[str, str]], **extra: Any) -> dict[str, Any]:
        return {"model": self.model, "messages": list(messages), "max_tokens": req.max_tokens,
                "temperature": req.temperature, "seed": req.seed, **extra}

    # -- choice probabilities ------------------------------------------------------------
    async def _choice_one(self, call: "_Call", req: ChoiceRequest, tally: "_Tally") -> ChoiceOutcome:
        body = {"model": self.model, "messages": list(req.messages), "max_tokens": 1, "temperature": 0.0,
                "logprobs": True, "top_logprobs": TOP_LOGPROBS}
        reply = await self._send(call, body, tally)
        top = _first_top_logprobs(reply.logprobs)
        if top is None:
            return GenError("the server returned no logprobs for the first token (does it support logprobs/top_logprobs?)",
                            tally.attempts, tally.usage())
        probs, mass = renormalise_choices(req.choices, [(str(e.get("token", "")), e.get("logprob")) for e in top])
        if mass <= 0.0:
            seen = ", ".join(repr(e.get("token")) for e in top[:5])
            return GenError(f"none of the choices {', '.join(req.choices)} is among the server's top {len(top)} "
                            f"next tokens (top: {seen})", tally.attempts, tally.usage())
        return ChoiceResult(probs, mass, usage=tally.usage())

    # -- HTTP ---------------------------------------------------------------------------
    async def _send(self, call: "_Call", body: dict[str, Any], tally: "_Tally", policy: RetryPolicy | None = None,
                    before: int | None = None) -> "_Reply":
        """One chat completion, retried by the policy; raises `_Failure` when it gives up.
        (`before`: the attempt count this request started from, when probes came first.)"""
        retry_loop = retrying(policy or self.retry)
        before = tally.attempts if before is None else before
        try:
            return await retry_loop(self._attempt, call, body, tally)
        except _Failure as exc:
            if exc.retryable:
                n = tally.attempts - before
                raise _Failure(f"{exc.reason} (gave up after {n} attempt{'s' if n > 1 else ''})", exc.status) from None
            raise

    async def _attempt(self, call: "_Call", body: dict[str, Any], tally: "_Tally") -> "_Reply":
        if call.batcher is not None:
            tally.attempts += 1
            try:
                return _parse_reply(await call.batcher.send(body), tally)
            except BatchFailure as exc:
                raise _Failure(self._scrub(f"batch: {exc.reason}"), exc.status) from None
        ticket = await call.rate.acquire(estimate_tokens(body) if call.rate.counts_tokens else 0.0)
        outcome, used, retry_after = "failed", None, None
        try:
            tally.attempts += 1
            before = tally.prompt_tokens + tally.completion_tokens
            try:
                status, response_headers, content = await post(call.client, call.url, body, self.timeout)
            except TimedOut as exc:
                # A server that queues requests (llama.cpp answers one at a time) times out
                # instead of refusing: that is load too, so rate control backs off.
                outcome = "rejected"
                raise _Failure(str(exc), retryable=True) from None
            except Unreachable as exc:  # refused, reset, disconnected, a torn body
                raise _Failure(f"server unreachable at {public_url(self.base_url)}: {exc}", retryable=True) from None
            if status >= 400:
                failure = self._status_failure(status, response_headers, content)
                if status in (429, 503):  # the server is over its limit: slow everyone down
                    outcome, retry_after = "rejected", failure.retry_after  # None when beyond max_retry_after
                raise failure
            reply = _parse_reply(content, tally)
            # usage the server reported corrects the token reservation; none reported: keep it
            outcome, used = "ok", (tally.prompt_tokens + tally.completion_tokens - before) or None
            return reply
        finally:
            await call.rate.release(ticket, outcome, used_tokens=used, retry_after=retry_after)

    def _status_failure(self, status: int, headers: Any, content: bytes) -> "_Failure":
        reason = f"server error {status}: {error_message(content)}"
        if status not in (408, 429) and status < 500:
            return _Failure(reason, status)
        wait = retry_after_seconds(headers)
        if wait is not None and wait > self.retry.max_retry_after:
            return _Failure(f"{reason} (the server asked to wait {wait:g}s, more than max_retry_after "
                            f"{self.retry.max_retry_after:g}s)", status)
        return _Failure(reason, status, retryable=True, retry_after=wait)

    def _scrub(self, text: str) -> str:
        return scrub_key(text, self._api_key)


def load_openai_generator(model: str, **opts: Any) -> OpenAIChatGenerator:
    """`openai:MODEL`. Options: base_url, api_key, concurrency (the most in flight), timeout,
    retry (RetryPolicy or dict), rate (RateControl or dict), structured ("auto" | "response_format" | "prompt"), max_reasks."""
    return OpenAIChatGenerator(model, **opts)


# -- per-call state -----------------------------------------------------------------------------
@dataclass(slots=True)
class _Call:
    """What one chat()/choice_probs() call shares: the HTTP session, the URL, the rate controller
    (and in batch mode the batcher that collects its requests)."""

    client: aiohttp.ClientSession
    url: str
    rate: RateController
    batcher: Batcher | None = None


@dataclass(slots=True)
class _Tally:
    """HTTP attempts and tokens of one request, over every retry and re-ask."""

    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens)


@dataclass(frozen=True, slots=True)
class _Reply:
    content: str | None
    finish_reason: str | None
    logprobs: Any = None


# -- parsing --------------------------------------------------------------------------------
def _parse_reply(raw: bytes, tally: _Tally) -> _Reply:
    """The first choice of a chat completion body, or a retryable broken-body failure."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise _Failure(f"broken response body (not JSON: {exc}; {len(raw)} bytes)", retryable=True) from None
    if not isinstance(data, dict):
        raise _Failure("broken response body (not a JSON object)", retryable=True)
    usage = data.get("usage")
    if isinstance(usage, dict):
        tally.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        tally.completion_tokens += int(usage.get("completion_tokens") or 0)
    choices = data.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    message = first.get("message") if first is not None else None
    if not isinstance(message, dict):
        detail = data.get("error") if data.get("error") else "no choices[0].message"
        raise _Failure(f"broken response body ({str(detail)[:300]})", retryable=True)
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise _Failure(f"broken response body (message content is a {type(content).__name__})", retryable=True)
    return _Reply(content, first.get("finish_reason"), first.get("logprobs"))


def _first_top_logprobs(logprobs: Any) -> list[dict[str, Any]] | None:
    """`logprobs.content[0].top_logprobs`, or None when the server sent none."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    first = content[0] if isinstance(content, list) and content and isinstance(content[0], dict) else None
    top = first.get("top_logprobs") if first is not None else None
    if not isinstance(top, list) or not top:
        return None
    return [e for e in top if isinstance(e, dict)]


# -- schemas ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=512)
def _response_format(model: type[BaseModel]) -> dict[str, Any]:
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", model.__name__)[:64] or "answer"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": json_schema_of(model), "strict": False}}


@functools.lru_cache(maxsize=512)
def _schema_instruction(model: type[BaseModel]) -> str:
    return ("Reply with only a JSON object (no prose, no code fences) that matches this JSON schema:\n"
            + json.dumps(json_schema_of(model), ensure_ascii=False))


def _with_instruction(messages: Sequence[dict[str, str]], instruction: str) -> list[dict[str, str]]:
    """The messages with `instruction` added to the system message (one is made if absent);
    appended rather than added as a second system turn, which some chat templates refuse."""
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0].get('content') or ''}\n\n{instruction}".lstrip()
        return out
    return [{"role": "system", "content": instruction}, *out]



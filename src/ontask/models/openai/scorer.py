"""Scorer against an OpenAI-compatible server (vLLM, or any server with legacy completions).

The server computes the log-probabilities; ontask renders the chat template itself
(sandboxed Jinja, as transformers does) so that the prompt is known exactly, then finds
the output tokens exactly, never by searching text:

- mode "echo" (portable): send prompt + output with `echo`, `logprobs`; the output tokens
  are those whose `text_offset` is at or after the end of the prompt. A token must start
  exactly there, otherwise the tokenizer merged across the boundary and the pass is an
  error rather than a guess.
- mode "prompt_logprobs" (vLLM, exact for every text): tokenise locally with the model's
  tokenizer (`template="hf:PATH"` or `tokenizer=PATH`), split prompt/output tokens as the
  local scorer does, send the token ids and read vLLM's `prompt_logprobs`.

Requests run concurrently under the same rate control as chat generation
(`generation.rate`: AIMD on requests in flight, Retry-After pauses, budgets) and are
retried by the same policy (`generation.retry`: 429/408/5xx/timeouts/connection errors,
exponential backoff with jitter, never shorter than Retry-After). A pass that still fails
becomes a `PassError` carrying the server's status and message; nothing is ever made up.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import os
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import jinja2
import jinja2.ext
import openai
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..transport.rate import RateControl, RateController, RateState, new_state
from ..transport.retry import Failure, RetryPolicy, retry_after_seconds, retrying
from ..base import PassError, PassOutcome, PassRequest, PassResult, fingerprint_of
from ..transport.endpoint import public_url, resolve_api_key, resolve_base_url, run_sync
from ..local.tokenized import split_pass

MODES = ("echo", "prompt_logprobs")


class ServerScorer:
    """Scores passes with an OpenAI-compatible completions endpoint."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        template: str | None = None,
        tokenizer: str | os.PathLike | None = None,
        concurrency: int = 16,
        mode: str = "echo",
        max_length: int | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        api_key: str | None = None,
        retry: RetryPolicy | dict[str, Any] | None = None,
        rate: RateControl | dict[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown server scoring mode '{mode}': use one of {', '.join(MODES)}")
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = resolve_base_url(base_url)
        self.concurrency = max(1, int(concurrency))
        self.mode = mode
        self.max_length = max_length
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry = retry if isinstance(retry, RetryPolicy) else RetryPolicy(**{"max_attempts": max_retries + 1,
                                                                                 **(retry or {})})
        self.rate = rate if isinstance(rate, RateControl) else RateControl(**(rate or {}))
        self.rate_state: RateState = new_state(self.rate, self.concurrency)
        self._api_key = resolve_api_key(api_key)
        self._sync_client: openai.OpenAI | None = None

        tok_path = tokenizer or (template[3:] if template and template.startswith("hf:") else None)
        self._tokenizer = _load_tokenizer(tok_path) if tok_path else None
        self._template_text, self._template_source = _template_text(template, self._tokenizer)
        self._template = _jinja_env().from_string(self._template_text)
        self._specials = dict(self._tokenizer.special_tokens_map) if self._tokenizer is not None else {}
        self.render_prompt = functools.lru_cache(maxsize=8192)(self._render)  # type: ignore[method-assign]
        if mode == "prompt_logprobs" and self._tokenizer is None:
            raise ValueError("mode prompt_logprobs sends token ids, so it needs the model's tokenizer locally: "
                             "template='hf:PATH' or tokenizer=PATH")

        self._identity: dict[str, Any] = {
            "server_model": model,
            "base_url": public_url(self.base_url),
            "template": hashlib.sha256(self._template_text.encode()).hexdigest()[:16],
            "mode": mode,
        }
        if mode == "prompt_logprobs":  # local token ids are sent, so the tokenizer is part of the result
            self._identity["tokenizer"] = _tokenizer_hash(self._tokenizer)
        self._fingerprint = fingerprint_of(self._identity)
        self.stats = {"requests": 0, "errors": 0}

    # -- identity -----------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self._fingerprint, "backend": "openai-server",
                "template_source": self._template_source, **self._identity, "concurrency": self.concurrency,
                "retry": self.retry.model_dump(), "rate": self.rate.model_dump(), "rate_state": self.rate_state.to_json()}

    # -- text ---------------------------------------------------------------------------
    def _render(self, user: str) -> str:
        return self._template.render(messages=[{"role": "user", "content": user}], add_generation_prompt=True, **self._specials)

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        if self._sync_client is None:
            self._sync_client = openai.OpenAI(base_url=self.base_url, api_key=self._api_key,
                                              timeout=self.timeout, max_retries=self.max_retries)
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        try:
            data = self._sync_client.post(f"{root}/tokenize", cast_to=object, body=body)
        except openai.NotFoundError as exc:
            raise NotImplementedError(
                f"{public_url(root)}/tokenize is not available ({_reason(exc)}); give the model's tokenizer "
                "(template='hf:PATH' or tokenizer=PATH) to count tokens locally") from None
        return int(data["count"])  # type: ignore[index]

    def encode(self, req: PassRequest) -> tuple[list[int], int] | PassError:
        """Local token ids of prompt + output and where the output starts (as HFScorer.encode)."""
        return split_pass(self._tokenizer, self.render_prompt(req.user), req.output, self.max_length)

    # -- scoring ------------------------------------------------------------------------
    def score(self, requests: Sequence[PassRequest]) -> list[PassOutcome]:
        if not requests:
            return []
        return run_sync(lambda: self._score_all(list(requests)))

    async def _score_all(self, requests: list[PassRequest]) -> list[PassOutcome]:
        # One client per call: an async HTTP client belongs to the event loop that made it.
        # Retries are ours (retry policy + rate control see every 429), not the SDK's.
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self.timeout, max_retries=0)
        control = RateController(self.rate, self.concurrency, self.rate_state)

        async def one(req: PassRequest) -> PassOutcome:
            try:
                return await retrying(self.retry)(self._attempt, client, control, req)
            except Failure as exc:
                return PassError(exc.reason)

        try:
            results = await asyncio.gather(*(one(r) for r in requests))
        finally:
            await client.close()
        self.stats["requests"] += len(requests)
        self.stats["errors"] += sum(isinstance(r, PassError) for r in results)
        return list(results)

    async def _attempt(self, client: openai.AsyncOpenAI, control: RateController, req: PassRequest) -> PassOutcome:
        """One HTTP attempt, admitted by rate control; a retryable `Failure` goes back to the policy."""
        ticket = await control.acquire(0.0)
        outcome, retry_after = "failed", None
        try:
            result = await (self._echo(client, req) if self.mode == "echo" else self._prompt_logprobs(client, req))
            outcome = "ok" if isinstance(result, PassResult) else "failed"
            return result
        except openai.APIStatusError as exc:
            status, wait = exc.status_code, retry_after_seconds(exc.response.headers)
            reason = f"server error {status}: {_reason(exc)}"
            retryable = status in (408, 429) or status >= 500
            if wait is not None and wait > self.retry.max_retry_after:
                retryable, wait = False, None
                reason += f" (the server asked to wait longer than max_retry_after {self.retry.max_retry_after:g}s)"
            if status in (429, 503):  # the server is over its limit: slow everyone down
                outcome, retry_after = "rejected", wait
            raise Failure(reason, status, retryable=retryable, retry_after=wait) from None
        except openai.APITimeoutError:
            raise Failure(f"server timeout after {self.timeout}s", retryable=True) from None
        except openai.APIConnectionError as exc:
            raise Failure(f"server unreachable at {public_url(self.base_url)}: {exc}", retryable=True) from None
        except Exception as exc:  # a malformed answer: one pass fails, not the batch
            return PassError(f"unexpected server response: {type(exc).__name__}: {exc}")
        finally:
            await control.release(ticket, outcome, retry_after=retry_after)

    async def _echo(self, client: openai.AsyncOpenAI, req: PassRequest) -> PassOutcome:
        if not req.output:
            return PassError("output has no tokens")
        prompt = self.render_prompt(req.user)
        full = prompt + req.output
        resp = await client.completions.create(
            model=self.model, prompt=full, echo=True, logprobs=1, max_tokens=1, temperature=0.0
        )
        lp = resp.choices[0].logprobs
        if lp is None or not lp.text_offset or lp.token_logprobs is None or lp.tokens is None:
            return PassError("server returned no echoed log-probs (does it support echo with logprobs?)")
        # The echoed prompt's tokens; anything after them was generated.
        n = resp.usage.prompt_tokens if resp.usage and 0 < resp.usage.prompt_tokens <= len(lp.text_offset) else None
        if n is None:
            n = sum(1 for off in lp.text_offset if off < len(full))
        offsets, tokens, logprobs = lp.text_offset[:n], lp.tokens[:n], lp.token_logprobs[:n]
        if "".join(tokens) != full and all(b - a == len(t) for a, b, t in zip(offsets, offsets[1:], tokens)):
            # Offsets counted from tokens decoded one by one (vLLM) drift when a token is part of a
            # character; only an offset mapping is exact then.
            return PassError("server text offsets are inexact for this text (tokens split characters); "
                             "use mode prompt_logprobs with the model's tokenizer")
        if len(prompt) not in offsets:
            return PassError("prompt/output boundary splits a token (the tokenizer merges across it); "
                             "use mode prompt_logprobs with the model's tokenizer")
        k = offsets.index(len(prompt))
        picked = [logprobs[i] for i, off in enumerate(offsets) if len(prompt) <= off < len(full)]
        if not picked:
            return PassError("output has no tokens")
        if any(v is None or not math.isfinite(v) for v in picked):
            return PassError("server returned no finite log-prob for an output token")
        if self.max_length and n > self.max_length:
            return PassError(f"too long: {n} tokens > model maximum {self.max_length}")
        return PassResult(math.fsum(picked), len(picked), k)

    async def _prompt_logprobs(self, client: openai.AsyncOpenAI, req: PassRequest) -> PassOutcome:
        enc = self.encode(req)
        if isinstance(enc, PassError):
            return enc
        ids, start = enc
        resp = await client.completions.create(
            model=self.model, prompt=ids, max_tokens=1, temperature=0.0, extra_body={"prompt_logprobs": 1}
        )
        choice = resp.choices[0]
        plp = getattr(choice, "prompt_logprobs", None)
        if plp is None:
            return PassError("server returned no prompt_logprobs (a vLLM extension; use mode echo elsewhere)")
        echoed = getattr(choice, "prompt_token_ids", None)
        if len(plp) != len(ids) or (echoed is not None and list(echoed) != ids):
            return PassError(f"server scored different tokens than sent ({len(plp)} log-probs for {len(ids)} tokens)")
        picked = []
        for j in range(start, len(ids)):
            entry = (plp[j] or {}).get(str(ids[j]))
            value = entry.get("logprob") if isinstance(entry, dict) else entry
            if value is None or not math.isfinite(value):
                return PassError(f"server returned no finite log-prob for output token {j - start}")
            picked.append(float(value))
        return PassResult(math.fsum(picked), len(picked), start)


def load_server_scorer(
    model: str,
    *,
    base_url: str | None = None,
    template: str | None = None,
    concurrency: int = 16,
    mode: str = "echo",
    max_length: int | None = None,
    timeout: float = 60.0,
    **kw: Any,
) -> ServerScorer:
    """`openai:MODEL` at `base_url`. `template`: a Jinja file, `hf:PATH` (a local tokenizer
    folder's chat template, which also gives a local tokenizer), or None for bundled ChatML."""
    return ServerScorer(model, base_url=base_url, template=template, concurrency=concurrency, mode=mode,
                        max_length=max_length, timeout=timeout, **kw)


# -- helpers --------------------------------------------------------------------------------
def _load_tokenizer(path: str | os.PathLike) -> Any:
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {path} (ontask never downloads models)")
    return AutoTokenizer.from_pretrained(path)


def _template_text(template: str | None, tokenizer: Any) -> tuple[str, str]:
    """The chat template's text and where it came from."""
    if template is None:
        return resources.files("ontask").joinpath("templates/chatml.jinja").read_text(encoding="utf-8"), "bundled:chatml.jinja"
    if template.startswith("hf:"):
        text = tokenizer.chat_template
        if isinstance(text, dict):  # named templates: the default one
            text = text.get("default")
        if not text:
            raise ValueError(f"{template[3:]}: the tokenizer has no chat_template")
        return text, template
    path = Path(template)
    if not path.is_file():
        raise FileNotFoundError(f"chat template file not found: {template} (give a .jinja file or hf:PATH)")
    return path.read_text(encoding="utf-8"), str(path)


class _Generation(jinja2.ext.Extension):
    """Accept `{% generation %}...{% endgeneration %}` (transformers' assistant mask markers)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _jinja_env() -> ImmutableSandboxedEnvironment:
    """The environment transformers renders chat templates in (sandboxed, trimmed blocks)."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _tokenizer_hash(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]




def _reason(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            return str(msg)[:500]
    return (str(body) if body else exc.message)[:500]

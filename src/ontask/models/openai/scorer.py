"""Scorer against an OpenAI-compatible server (vLLM, or any server with legacy completions).

The server computes the log-probabilities; ontask renders the prompt itself so that it is
known exactly, in the served model's own chat template: learned from the server (it
applies its template to probe messages) unless given (`template=hf:PATH`, a .jinja file,
or `chatml`); a server that cannot apply its template and was given none is refused, never
scored through a guessed ChatML prompt. Then the output tokens are found exactly, never by
searching text:

- mode "echo" (portable): send prompt + output with `echo`, `logprobs`; the output tokens
  are those whose `text_offset` is at or after the end of the prompt. A token must start
  exactly there, otherwise the tokenizer merged across the boundary and the pass is an
  error rather than a guess. Where the echoed text is not the text sent (llama.cpp drops
  special tokens from it), the output is located by the server's own token counts instead
  (its tokenize endpoint: prompt ids must be a prefix of prompt+output ids).
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
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from ..transport.rate import RateControl, RateController, RateState, new_state
from ..transport.retry import Failure, RetryPolicy, retry_after_seconds, retrying
from ..base import OnResults, PassError, PassOutcome, PassRequest, PassResult, fingerprint_of
from ..transport.endpoint import public_url, resolve_api_key, resolve_base_url, run_sync, scrub_key
from ..transport.http import HTTPStatusError, TimedOut, Unreachable, post_json, post_json_sync, session
from ..local.templates import SplicedTemplate, gguf_template, jinja_env, template_text
from ..local.tokenized import split_pass
from .batch import Batcher, BatchFailure, BatchSettings, default_log
from .batch import batch_settings as to_batch_settings

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
        batch: bool = False,
        batch_settings: BatchSettings | dict[str, Any] | None = None,
        batch_log: str | os.PathLike | None = None,
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

        tok_path = tokenizer or (template[3:] if template and template.startswith("hf:") else None)
        self._tokenizer = _load_tokenizer(tok_path) if tok_path else None
        self._server_tokenize: str | None = None  # which tokenize endpoint this server has (found on first use)
        self._prompt_ids: dict[str, list[int]] = {}  # server token ids of rendered prompts (bounded)
        self._spliced: SplicedTemplate | None = None
        self._template_problem: str | None = None  # the server could not be asked (yet): passes fail with this
        if template in (None, "server"):
            # The served model's own template, applied by the server to probe messages. A
            # server that answers but cannot do it is refused now; one that cannot be reached
            # (or fails) is asked again at the first pass.
            template_digest = self._ensure_template()
        else:
            self._template_text, self._template_source = template_text(template, self._tokenizer)
            self._template = jinja_env().from_string(self._template_text)
            template_digest = hashlib.sha256(self._template_text.encode()).hexdigest()[:16]
        self._specials = dict(self._tokenizer.special_tokens_map) if self._tokenizer is not None else {}
        if template and template.startswith("gguf:"):
            self._specials = gguf_template(template[5:])[1]
        self.render_prompt = functools.lru_cache(maxsize=8192)(self._render)  # type: ignore[method-assign]
        if mode == "prompt_logprobs" and self._tokenizer is None:
            raise ValueError("mode prompt_logprobs sends token ids, so it needs the model's tokenizer locally: "
                             "template='hf:PATH' or tokenizer=PATH")

        self._identity: dict[str, Any] = {
            "server_model": model,
            "base_url": public_url(self.base_url),
            "template": template_digest,
            "mode": mode,
        }
        if mode == "prompt_logprobs":  # local token ids are sent, so the tokenizer is part of the result
            self._identity["tokenizer"] = _tokenizer_hash(self._tokenizer)
        self._fingerprint = fingerprint_of(self._identity)
        self.stats = {"requests": 0, "errors": 0}
        # Batch mode: every pass's completions request through the provider's batch API
        # (batch.py), answered and read exactly as online; same answers, same fingerprint.
        self.batch = bool(batch)
        self.batch_settings = to_batch_settings(batch_settings)
        self.batch_log = Path(batch_log) if batch_log else default_log(self._fingerprint)
        self._batcher: Batcher | None = None

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
        if self._template_problem is not None:
            raise ValueError(self._template_problem)
        if self._spliced is not None:
            return self._spliced.render(user)
        return self._template.render(messages=[{"role": "user", "content": user}], add_generation_prompt=True, **self._specials)

    def _ensure_template(self) -> str:
        """Learn the server's template if not yet known; its digest (or "unknown" while the
        server cannot be asked, `_template_problem` saying why)."""
        if self._spliced is None:
            try:
                self._spliced, self._template_source = self._learn_server_template()
                self._template_problem = None
            except _Unreachable as exc:
                self._template_source, self._template_problem = "server (not reached yet)", str(exc)
                return "unknown"
            if hasattr(self, "_identity"):  # learned after construction: the identity changes with it
                self._identity["template"] = self._spliced.digest()
                self._fingerprint = fingerprint_of(self._identity)
        return self._spliced.digest()

    def _learn_server_template(self) -> tuple[SplicedTemplate, str]:
        """Have the server apply its model's chat template to probe messages: vLLM's
        `POST /tokenize` with `messages` then `/detokenize`, or llama.cpp's `POST
        /apply-template`. A server with neither (llama-cpp-python) is refused with the ways to
        give the template: never a guessed (ChatML) prompt."""
        root = self._root()
        tried = []

        def ask(path: str, body: dict[str, Any]) -> Any:
            return post_json_sync(root + path, body, api_key=self._api_key, timeout=self.timeout)

        def vllm(content: str) -> str:
            messages = [{"role": "user", "content": content}]
            ids = ask("/tokenize", {"model": self.model, "messages": messages, "add_generation_prompt": True,
                                    "add_special_tokens": False})
            return str(ask("/detokenize", {"model": self.model, "tokens": ids["tokens"]})["prompt"])

        def llama_cpp(content: str) -> str:
            return str(ask("/apply-template", {"messages": [{"role": "user", "content": content}]})["prompt"])

        for name, render in (("POST /tokenize with messages + /detokenize", vllm), ("POST /apply-template", llama_cpp)):
            try:
                return SplicedTemplate.learn(render), f"server:{name.split()[1]}"
            except (Unreachable, TimedOut) as exc:
                raise _Unreachable(f"server unreachable at {public_url(self.base_url)} (asking for its chat template): "
                                   f"{exc}") from None
            except HTTPStatusError as exc:
                if exc.status >= 500 and exc.status != 501:
                    raise _Unreachable(f"server error {exc.status} asking for its chat template: {exc.message}") from None
                tried.append(f"{name}: {exc.status} {exc.message}")
            except (KeyError, TypeError):
                tried.append(f"{name}: unexpected answer")
            except ValueError as exc:
                tried.append(f"{name}: {exc}")
        raise ValueError(
            f"openai:{self.model}: the server at {public_url(self.base_url)} cannot apply its chat template for ontask "
            f"({'; '.join(tried)}), and scoring needs the served model's own template. Give it with the template "
            "option: template=gguf:PATH (the GGUF file a llama.cpp server serves), template=hf:PATH (a local copy of "
            "the model's tokenizer folder), template=FILE.jinja, or template=chatml if the model really is ChatML "
            "(e.g. --model-option scorer.template=gguf:/models/x.gguf)")

    def _url(self, path: str) -> str:
        """`base_url` + `path`, a query string the base URL carries (a gateway's key) kept after the path."""
        parts = urlsplit(self.base_url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, parts.query, ""))

    def _scrub(self, text: str) -> str:
        return scrub_key(text, self._api_key)

    def _root(self) -> str:
        """The server's root: tokenize and template endpoints live beside /v1 (`_root() + path`
        keeps a query string the base URL carries, e.g. a key for a gateway, after the path)."""
        parts = urlsplit(self.base_url)
        path = parts.path.rstrip("/")
        path = path[: -len("/v1")] if path.endswith("/v1") else path
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        root = self._root()
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        try:
            data = post_json_sync(f"{root}/tokenize", body, api_key=self._api_key, timeout=self.timeout)
        except HTTPStatusError as exc:
            if exc.status != 404:
                raise
            raise NotImplementedError(
                f"{public_url(root)}/tokenize is not available ({exc.message}); give the model's tokenizer "
                "(template='hf:PATH' or tokenizer=PATH) to count tokens locally") from None
        return int(data["count"])

    def encode(self, req: PassRequest) -> tuple[list[int], int] | PassError:
        """Local token ids of prompt + output and where the output starts (as HFScorer.encode)."""
        return split_pass(self._tokenizer, self.render_prompt(req.user), req.output, self.max_length)

    # -- scoring ------------------------------------------------------------------------
    def score(self, requests: Sequence[PassRequest], on_results: OnResults | None = None) -> list[PassOutcome]:
        if not requests:
            return []
        if self._template_problem is not None:
            self._ensure_template()
            if self._template_problem is not None:  # still unreachable: every pass fails with the reason
                failed: list[PassOutcome] = [PassError(self._template_problem) for _ in requests]
                if on_results:
                    on_results(list(enumerate(failed)))
                return failed
        return run_sync(lambda: self._score_all(list(requests), on_results))

    async def _score_all(self, requests: list[PassRequest], on_results: OnResults | None = None) -> list[PassOutcome]:
        # One session per call: it belongs to the event loop that made it. Retries are the
        # retry policy's and rate control sees every 429.
        client = session(self._api_key, self.concurrency)
        control = RateController(self.rate, self.concurrency, self.rate_state)
        self._batcher = Batcher.for_server(self.base_url, self._api_key, "/v1/completions", self.model, self.batch_log,
                                           self.batch_settings, timeout=self.timeout, retry=self.retry) \
            if self.batch else None

        async def one(i: int, req: PassRequest) -> PassOutcome:
            try:
                result: PassOutcome = await retrying(self.retry)(self._attempt, client, control, req)
            except Failure as exc:
                result = PassError(exc.reason)
            if on_results:
                on_results([(i, result)])  # committed as it arrives; may raise to stop the call
            return result

        tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(requests)]
        try:
            results = await asyncio.gather(*tasks)
        finally:  # a stop (budget, Ctrl-C) cancels the requests still in flight before the session closes
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()
        self.stats["requests"] += len(requests)
        self.stats["errors"] += sum(isinstance(r, PassError) for r in results)
        return list(results)

    async def _attempt(self, client: aiohttp.ClientSession, control: RateController, req: PassRequest) -> PassOutcome:
        """One HTTP attempt, admitted by rate control; a retryable `Failure` goes back to the policy.
        (In batch mode every pass goes at once: the batch, not the connection, is the unit.)"""
        if self._batcher is not None:
            try:
                return await (self._echo(client, req) if self.mode == "echo" else self._prompt_logprobs(client, req))
            except BatchFailure as exc:
                raise Failure(self._scrub(f"batch: {exc.reason}"), exc.status) from None
        ticket = await control.acquire(0.0)
        outcome, retry_after = "failed", None
        try:
            result = await (self._echo(client, req) if self.mode == "echo" else self._prompt_logprobs(client, req))
            outcome = "ok" if isinstance(result, PassResult) else "failed"
            return result
        except HTTPStatusError as exc:
            status, wait = exc.status, retry_after_seconds(exc.headers)
            reason = f"server error {status}: {self._scrub(exc.message)}"
            retryable = status in (408, 429) or status >= 500
            if wait is not None and wait > self.retry.max_retry_after:
                retryable, wait = False, None
                reason += f" (the server asked to wait longer than max_retry_after {self.retry.max_retry_after:g}s)"
            if status in (429, 503):  # the server is over its limit: slow everyone down
                outcome, retry_after = "rejected", wait
            raise Failure(reason, status, retryable=retryable, retry_after=wait) from None
        except TimedOut:
            # A server that queues requests (llama.cpp works one at a time) times out instead
            # of refusing: that is load too, so rate control backs off.
            outcome = "rejected"
            raise Failure(f"server timeout after {self.timeout}s", retryable=True) from None
        except Unreachable as exc:
            raise Failure(f"server unreachable at {public_url(self.base_url)}: {exc}", retryable=True) from None
        except Exception as exc:  # a malformed answer: one pass fails, not the batch
            return PassError(f"unexpected server response: {type(exc).__name__}: {exc}")
        finally:
            await control.release(ticket, outcome, retry_after=retry_after)

    async def _echo(self, client: aiohttp.ClientSession, req: PassRequest) -> PassOutcome:
        if not req.output:
            return PassError("output has no tokens")
        prompt = self.render_prompt(req.user)
        full = prompt + req.output
        resp = await self._complete(client, {
            "model": self.model, "prompt": full, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0.0})
        lp = resp["choices"][0].get("logprobs") or {}
        text_offset, tokens_all, logprobs_all = lp.get("text_offset"), lp.get("tokens"), lp.get("token_logprobs")
        if not text_offset or tokens_all is None or logprobs_all is None:
            return PassError("server returned no echoed log-probs (does it support echo with logprobs?)")
        usage = resp.get("usage") or {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        # The echoed prompt's tokens; anything after them was generated.
        n = prompt_tokens if isinstance(prompt_tokens, int) and 0 < prompt_tokens <= len(text_offset) else None
        if n is None:
            n = sum(1 for off in text_offset if off < len(full))
        offsets, tokens, logprobs = text_offset[:n], tokens_all[:n], logprobs_all[:n]
        drifting = all(b - a == len(s) for a, b, s in zip(offsets, offsets[1:], tokens))
        if "".join(tokens) != full and (drifting or len(prompt) not in offsets):
            # The echo is not the text sent, and its offsets count the echoed pieces: special tokens dropped (llama-cpp-python leaves its
            # BOS <|im_start|> out of the echo and renders <|im_end|> as ""), or tokens that
            # split characters (vLLM's per-token decode). Offsets into that text cannot place
            # the boundary; the server's token counts can.
            generated = completion_tokens if isinstance(completion_tokens, int) else 1
            echoed = len(logprobs_all) - generated
            return await self._locate_by_count(client, req.output, prompt, full, tokens_all[:echoed],
                                               logprobs_all[:echoed], prompt_tokens if isinstance(prompt_tokens, int) else None)
        if len(prompt) not in offsets:
            return PassError("prompt/output boundary splits a token (the tokenizer merges across it); "
                             "use mode prompt_logprobs with the model's tokenizer")
        k = offsets.index(len(prompt))
        picked = [logprobs[i] for i, off in enumerate(offsets) if len(prompt) <= off < len(full)]
        return self._result(picked, k, n)

    async def _complete(self, client: aiohttp.ClientSession, body: dict[str, Any]) -> Any:
        """One completions request: online, or as a line of the current provider batch."""
        if self._batcher is not None:
            return json.loads(await self._batcher.send(body))
        return await post_json(client, self._url("/completions"), body, self.timeout)

    def _result(self, picked: list[Any], n_prompt: int, n_total: int) -> PassOutcome:
        if not picked:
            return PassError("output has no tokens")
        if any(v is None or not math.isfinite(v) for v in picked):
            return PassError("server returned no finite log-prob for an output token")
        if self.max_length and n_total > self.max_length:
            return PassError(f"too long: {n_total} tokens > model maximum {self.max_length}")
        return PassResult(math.fsum(picked), len(picked), n_prompt)

    async def _locate_by_count(self, client: aiohttp.ClientSession, output: str, prompt: str, full: str,
                               tokens: list[str], logprobs: list[Any], n_full_server: int | None) -> PassOutcome:
        """The output's tokens located exactly by the server's own tokenisation: the prompt's
        ids must be a prefix of prompt+output's (else the tokenizer merges across the
        boundary and the pass is an error, not a guess); the output's tokens are then the last
        len(full) - len(prompt) echoed tokens (a server may leave special tokens of the
        prompt out of its echo, never ordinary ones), and their texts must spell the output."""
        prompt_ids = self._prompt_ids.get(prompt)
        if prompt_ids is None:
            prompt_ids = await self._tokenize(client, prompt)
            if isinstance(prompt_ids, PassError):
                return prompt_ids
            if len(self._prompt_ids) > 4096:
                self._prompt_ids.clear()
            self._prompt_ids[prompt] = prompt_ids
        full_ids = await self._tokenize(client, full)
        if isinstance(full_ids, PassError):
            return full_ids
        k = len(prompt_ids)
        if full_ids[:k] != prompt_ids:
            return PassError("prompt/output boundary splits a token (the tokenizer merges across it); "
                             "use mode prompt_logprobs with the model's tokenizer")
        if n_full_server is not None and n_full_server != len(full_ids):
            return PassError(f"the server counted {n_full_server} prompt tokens but tokenises the text as {len(full_ids)}")
        n_out = len(full_ids) - k
        if n_out > len(tokens) or "" in tokens[len(tokens) - n_out:]:  # a special token rendered as "" in the output
            return PassError("the output holds special tokens the server leaves out of its echo; "
                             "use mode prompt_logprobs with the model's tokenizer")
        return self._result(list(logprobs[len(tokens) - n_out:]), k, len(full_ids))

    async def _tokenize(self, client: aiohttp.ClientSession, text: str) -> list[int] | PassError:
        """Token ids as the server's completions endpoint sees `text` (special tokens parsed,
        BOS as it adds it): vLLM's `/tokenize`, llama-cpp-python's `/extras/tokenize`, or
        llama.cpp's `/tokenize` (`content`), whichever the server has (found once)."""
        root = self._root()
        forms = {
            "vllm": (f"{root}/tokenize", {"model": self.model, "prompt": text}),
            "llama-cpp-python": (f"{root}/extras/tokenize", {"model": self.model, "input": text}),
            "llama.cpp": (f"{root}/tokenize", {"content": text, "add_special": True, "parse_special": True}),
        }
        order = [self._server_tokenize] if self._server_tokenize else list(forms)
        problems = []
        for kind in order:
            url, body = forms[kind]
            try:
                data = await post_json(client, url, body, self.timeout)
                ids = data["tokens"]
                if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                    raise TypeError("tokens is not a list of ids")
            except HTTPStatusError as exc:
                if exc.status in (408, 429) or exc.status >= 500:
                    raise  # load or a fault: the retry policy and rate control handle it
                problems.append(f"{kind}: {exc.message}")
                continue
            except (KeyError, TypeError) as exc:
                problems.append(f"{kind}: unexpected answer ({exc})")
                continue
            self._server_tokenize = kind
            return list(ids)
        return PassError("the server echoes a text other than the one sent and has no tokenize endpoint to "
                         f"locate the output by ({'; '.join(problems)}); use mode prompt_logprobs with the "
                         "model's tokenizer")

    async def _prompt_logprobs(self, client: aiohttp.ClientSession, req: PassRequest) -> PassOutcome:
        enc = self.encode(req)
        if isinstance(enc, PassError):
            return enc
        ids, start = enc
        resp = await self._complete(client, {
            "model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 1})
        choice = resp["choices"][0]
        plp = choice.get("prompt_logprobs")
        if plp is None:
            return PassError("server returned no prompt_logprobs (a vLLM extension; use mode echo elsewhere)")
        echoed = choice.get("prompt_token_ids")
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
    """`openai:MODEL` at `base_url`. `template`: None or "server" (the server applies its
    own, learned from probes), `hf:PATH` (a local tokenizer folder's chat template, which also
    gives a local tokenizer), `gguf:PATH` (the template in a GGUF file's metadata), a .jinja
    file, or "chatml" (the bundled ChatML)."""
    return ServerScorer(model, base_url=base_url, template=template, concurrency=concurrency, mode=mode,
                        max_length=max_length, timeout=timeout, **kw)


# -- helpers --------------------------------------------------------------------------------
def _load_tokenizer(path: str | os.PathLike) -> Any:
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {path} (ontask never downloads models)")
    return AutoTokenizer.from_pretrained(path)


def _tokenizer_hash(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Unreachable(Exception):
    """The server could not be asked for its chat template (connection, 5xx): try again later."""

"""A small, deterministic OpenAI-compatible server for tests and benchmarks.

Two faces, one server:

- legacy completions over a local transformers model (`model_dir`), answering like vLLM
  (`echo` + `logprobs`, vLLM's `prompt_logprobs` extension, `/tokenize`), with
  log-probabilities from a plain full-logits forward pass (a reference, independent of
  ontask's own scorer);
- chat completions with no model at all: answers come from `chat_handler(body)` or, by
  default, are derived from the sha256 of the messages: a schema-valid JSON instance when
  `response_format` carries a JSON schema, otherwise a plain sentence; OpenAI-shaped
  `top_logprobs` for the first token when asked (a digit 1-5 answer gets a distribution
  over all five digits whose argmax is that digit).

It injects faults, each drawn per request from one seeded RNG: 500s, 429s (with
Retry-After), HTTP 200 with a broken body, and answers delayed past a client's timeout;
plus a fixed latency. Every request is logged (path, body, status sent, fault kind) in
memory and, with `log_path`, appended and flushed to a JSONL file as it is answered, so
another process can follow it. `python -m ontask.testing.fake_server` runs it in its own
process (client and server then don't share a GIL) and prints its base URL.

    with FakeServer(model_dir=tiny_dir, latency=0.05) as srv:
        client = AsyncOpenAI(base_url=srv.base_url, api_key="EMPTY")
        ... len(srv.requests) ...
    with FakeServer(fail_rate_429=0.1) as srv:   # chat only
        ...
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from aiohttp import web

from .fake_batches import BatchAPI

ChatHandler = Callable[[dict[str, Any]], "str | None"]

_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"\s*(?:\d|[^\W\d]+|[^\w\s])|\s+")  # digits one by one, words, punctuation
_VOCAB = ("answer", "model", "data", "result", "value", "note", "point", "task", "step", "item",
          "summary", "clear", "short", "simple", "quick", "useful", "first", "next", "final", "example")
_DIGITS = ("1", "2", "3", "4", "5")


class FakeError(Exception):
    """Raise from a `chat_handler` to send an error response instead of an answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class _Reply:
    """What a handler answers: status, JSON payload, headers, and the fault injected (if any)."""

    __slots__ = ("status", "payload", "headers", "fault")

    def __init__(self, status: int, payload: Any, headers: dict[str, str] | None = None, fault: str | None = None) -> None:
        self.status, self.payload, self.headers, self.fault = status, payload, headers, fault


class FakeServer:
    """Serves on 127.0.0.1 (a free port unless `port`) from a background thread.

    `chat_handler(body) -> str | None` answers chat requests (None: a null content); it may
    raise `FakeError(status, message, headers)` to answer with an HTTP error instead.
    `model_name` may be a list: every name is served (the same way).
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        model_name: str | Sequence[str] = "tiny",
        latency: float = 0.0,
        fail_rate_500: float = 0.0,
        fail_rate_429: float = 0.0,
        fail_rate_bad_body: float = 0.0,
        fail_rate_timeout: float = 0.0,
        retry_after: float = 0.05,
        timeout_delay: float = 30.0,
        max_concurrent: int | None = None,
        chat_handler: ChatHandler | None = None,
        reject_response_format: bool = False,
        reject_json_schema: int | None = None,
        chat_template: str | None = None,
        template_endpoint: str | None = "vllm",
        log_path: str | Path | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        batch_delay: float = 0.0,
        batch_fail_rate: float = 0.0,
        batch_fail_once: bool = False,
        batch_expire: int = 0,
    ) -> None:
        self.tokenizer: Any = None
        self.model: Any = None
        self.max_model_len = 2048
        if model_dir is not None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
            self.max_model_len = int(getattr(self.model.config, "max_position_embeddings", 2048))
        # One name or several (e.g. two "models" as two responders); requests must name one.
        self.model_names = (model_name,) if isinstance(model_name, str) else tuple(model_name)
        self.model_name = self.model_names[0]
        self.latency, self.retry_after, self.timeout_delay = latency, retry_after, timeout_delay
        self.fail_rate_500, self.fail_rate_429 = fail_rate_500, fail_rate_429
        self.fail_rate_bad_body, self.fail_rate_timeout = fail_rate_bad_body, fail_rate_timeout
        # A concurrency-limited server (TGI's max_concurrent_requests, a gateway): a request
        # arriving while `max_concurrent` are being answered gets an immediate 429.
        self.max_concurrent = max_concurrent
        self.chat_handler: ChatHandler = chat_handler or default_chat_answer
        self.reject_response_format = reject_response_format
        # llama-cpp-python answers `response_format: json_schema` with a 500 and takes
        # {"type": "json_object", "schema": ...}: `reject_json_schema=500` does the same.
        self.reject_json_schema = reject_json_schema
        # The served model's chat template (default: its tokenizer's), and how a client can
        # have it applied: "vllm" (POST /tokenize with messages, then /detokenize),
        # "llama.cpp" (POST /apply-template), or None (no way, as llama-cpp-python).
        if chat_template is not None and self.tokenizer is not None:
            self.tokenizer.chat_template = chat_template
        self.template_endpoint = template_endpoint
        self.host, self.port = host, port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._log: list[dict[str, Any]] = []
        self._log_path = Path(log_path) if log_path else None
        self._log_file: Any = None
        self._in_flight = 0
        self.max_in_flight = 0
        self.base_url = ""
        # OpenAI's Files and Batches APIs (fake_batches.py): lines answered as online requests are
        self.batches = BatchAPI(self._answer_line, delay=batch_delay, fail_rate=batch_fail_rate,
                                fail_once=batch_fail_once, expire=batch_expire)

    # -- request log --------------------------------------------------------------------
    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request received so far: `path`, `body`, `status` (None until answered, or if
        the client went away first), `fault` (None, "500", "429", "bad_body:truncated",
        "bad_body:not_json", "bad_body:no_choices", "timeout", "concurrency"), `in_flight` (requests
        being answered when it arrived, itself included), `received`/`answered` (time.time())."""
        with self._lock:
            return [dict(r) for r in self._log]

    def count(self, path: str = "/v1/completions") -> int:
        return sum(1 for r in self.requests if r["path"] == path)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> "FakeServer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self.base_url = f"http://{self.host}:{self.port}/v1"
        if self._log_path is not None:
            self._log_file = self._log_path.open("a", encoding="utf-8")
        self._loop = asyncio.new_event_loop()
        ready, failure = threading.Event(), []

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            # A client that gave up (timeout) cancels its handler; shutdown waits at most 1 s.
            runner = web.AppRunner(self._app(), handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
            try:
                self._loop.run_until_complete(runner.setup())
                self._loop.run_until_complete(web.SockSite(runner, sock, backlog=1024).start())
            except Exception as exc:  # reported to the starting thread
                failure.append(exc)
            ready.set()
            if not failure:
                self._loop.run_forever()
            self._loop.run_until_complete(runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="fake-openai-server", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        if self._log_file is not None:
            with self._lock:
                self._log_file.close()
                self._log_file = None

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._serve(self._completions))
        app.router.add_post("/v1/chat/completions", self._serve(self._chat))
        app.router.add_post("/tokenize", self._serve(self._tokenize))
        app.router.add_post("/detokenize", self._serve(self._detokenize))
        app.router.add_post("/apply-template", self._serve(self._apply_template))
        self.batches.routes(app, self._serve_batch_api)
        return app

    def _serve_batch_api(self, handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        """A Files/Batches endpoint, logged like the others; its log `body` says what it did
        (the custom_ids a batch file holds, the batch created or polled)."""
        async def handle(request: web.Request) -> web.Response:
            entry = self._received(request.path, None)
            reply: _Reply | None = None
            try:
                status, payload, entry["body"] = await handler(request)
                reply = _Reply(status, payload)
                if isinstance(payload, bytes):
                    return web.Response(body=payload, status=status, content_type="application/octet-stream")
                return _to_response(reply)
            finally:
                self._answered(entry, reply)

        return handle

    def _answer_line(self, endpoint: str, body: dict[str, Any]) -> tuple[int, Any]:
        """One request of a batch, answered as the online endpoint answers it (no faults, no latency)."""
        if body.get("model") not in self.model_names:
            reply = _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        elif endpoint == "/v1/chat/completions":
            reply = self._chat(body)
        elif endpoint == "/v1/completions" and self.model is not None:
            reply = self._completions(body)
        else:
            reply = _error(400, f"endpoint {endpoint} is not served here")
        return reply.status, reply.payload

    # -- the request path: log, latency, faults, answer ---------------------------------
    def _serve(self, answer: Callable[[dict[str, Any]], _Reply]) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            try:
                body = await request.json()
            except ValueError:
                body = None
            entry = self._received(request.path, body)
            entry["headers"] = {"Authorization": request.headers.get("Authorization")}  # which key reached us
            reply: _Reply | None = None
            try:
                reply = await self._answer(body, answer, entry)
                return _to_response(reply)
            finally:
                self._answered(entry, reply)

        return handle

    async def _answer(self, body: Any, answer: Callable[[dict[str, Any]], _Reply], entry: dict[str, Any]) -> _Reply:
        if self.max_concurrent is not None and entry["in_flight"] > self.max_concurrent:
            return _error(429, f"more than {self.max_concurrent} concurrent requests", "RateLimitError",
                          self._retry_after_headers(), fault="concurrency")
        fault = None
        if entry["path"] in MODEL_CALLS:  # latency and faults: model calls only (tokenize / template are instant)
            if self.latency:
                await asyncio.sleep(self.latency)
            fault = entry["fault"] = self._draw_fault()
            if fault == "500":
                return _error(500, "injected internal server error", "InternalServerError", fault=fault)
            if fault == "429":
                return _error(429, "injected rate limit", "RateLimitError", self._retry_after_headers(), fault=fault)
            if fault == "timeout":
                await asyncio.sleep(self.timeout_delay)
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        if entry["path"] != "/apply-template" and body.get("model") not in self.model_names:  # llama.cpp's takes none
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        reply = answer(body)
        if fault is not None:
            reply.fault = fault
            if fault.startswith("bad_body") and reply.status == 200:
                reply.payload = _BrokenBody(fault, reply.payload)
        return reply

    def _retry_after_headers(self) -> dict[str, str]:
        return {"Retry-After": str(math.ceil(self.retry_after)), "retry-after-ms": str(int(self.retry_after * 1000))}

    def _draw_fault(self) -> str | None:
        with self._lock:
            draw = self._rng.random()
            edge = self.fail_rate_500
            if draw < edge:
                return "500"
            edge += self.fail_rate_429
            if draw < edge:
                return "429"
            edge += self.fail_rate_bad_body
            if draw < edge:
                return ("bad_body:truncated", "bad_body:not_json", "bad_body:no_choices")[self._rng.randrange(3)]
            edge += self.fail_rate_timeout
            return "timeout" if draw < edge else None

    def _received(self, path: str, body: Any) -> dict[str, Any]:
        entry = {"path": path, "body": body, "status": None, "fault": None, "received": time.time(), "answered": None}
        with self._lock:
            self._log.append(entry)
            self._in_flight += 1
            entry["in_flight"] = self._in_flight  # counting this one
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        return entry

    def _answered(self, entry: dict[str, Any], reply: _Reply | None) -> None:
        with self._lock:
            self._in_flight -= 1
            if reply is not None:
                entry["status"], entry["answered"] = reply.status, time.time()
                entry["fault"] = reply.fault or entry["fault"]
            if self._log_file is not None:
                self._log_file.write(json.dumps({k: v for k, v in entry.items() if k != "headers"}, default=str) + "\n")
                self._log_file.flush()

    # -- handlers -----------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        entry = self._received(request.path, None)
        models = [{"id": name, "object": "model", "owned_by": "ontask-fake", "max_model_len": self.max_model_len}
                  for name in self.model_names]
        reply = _Reply(200, {"object": "list", "data": models})
        self._answered(entry, reply)
        return _to_response(reply)

    def _chat(self, body: dict[str, Any]) -> _Reply:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
            return _error(400, "messages must be a non-empty list of {role, content} objects")
        if self.reject_response_format and body.get("response_format") is not None:
            return _error(400, "response_format is not supported by this server")
        if self.reject_json_schema and (body.get("response_format") or {}).get("type") == "json_schema":
            return _error(self.reject_json_schema, "1 validation error: ('body', 'response_format', 'type'): "
                                                   "Input should be 'text' or 'json_object'", "InternalServerError")
        try:
            text = self.chat_handler(body)
        except FakeError as exc:
            return _error(exc.status, exc.message, headers=exc.headers)
        return _Reply(200, chat_completion(body, text, body["model"]))

    def _tokenize(self, body: dict[str, Any]) -> _Reply:
        if self.tokenizer is None:
            return _error(404, "this fake server has no model (start it with model_dir)", "NotFoundError")
        if "messages" in body:  # vLLM's chat form: the chat template applied, then tokenised
            if self.template_endpoint != "vllm":
                return _error(400, "messages are not supported here")
            text = self.tokenizer.apply_chat_template(body["messages"], tokenize=False,
                                                      add_generation_prompt=body.get("add_generation_prompt", True))
            ids = self.tokenizer(text, add_special_tokens=body.get("add_special_tokens", False))["input_ids"]
        else:
            ids = self.tokenizer(body.get("prompt", ""), add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
        return _Reply(200, {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids, "token_strs": None})

    def _detokenize(self, body: dict[str, Any]) -> _Reply:
        if self.tokenizer is None or self.template_endpoint != "vllm":
            return _error(404, "Not Found", "NotFoundError")
        return _Reply(200, {"prompt": self.tokenizer.decode(body.get("tokens") or [])})

    def _apply_template(self, body: dict[str, Any]) -> _Reply:
        if self.tokenizer is None or self.template_endpoint != "llama.cpp":
            return _error(404, "Not Found", "NotFoundError")
        return _Reply(200, {"prompt": self.tokenizer.apply_chat_template(body["messages"], tokenize=False,
                                                                         add_generation_prompt=True)})

    def _completions(self, body: dict[str, Any]) -> _Reply:
        if self.model is None:
            return _error(404, "this fake server has no model for completions (start it with model_dir)", "NotFoundError")
        prompts = body.get("prompt")
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        echo, max_tokens = bool(body.get("echo")), body.get("max_tokens", 16)
        if not isinstance(prompts, list) or not prompts:
            return _error(400, "prompt must be a string, a list of strings or token ids")
        if max_tokens not in (0, 1) or (max_tokens == 0 and not echo):
            return _error(400, "the fake server generates exactly one token (or none with echo)")
        choices, n_prompt = [], 0
        for i, prompt in enumerate(prompts):
            text, ids, offsets = self._encode(prompt, body.get("add_special_tokens", True))
            if not ids or len(ids) + max_tokens > self.max_model_len:
                return _error(400, f"This model's maximum context length is {self.max_model_len} tokens; "
                                   f"the prompt has {len(ids)} (empty prompts are refused too).")
            choices.append(self._choice(i, text, ids, offsets, echo, max_tokens, body.get("logprobs"), body.get("prompt_logprobs")))
            n_prompt += len(ids)
        n_gen = max_tokens * len(prompts)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_gen, "total_tokens": n_prompt + n_gen}
        return _Reply(200, {"id": f"cmpl-fake-{time.monotonic_ns()}", "object": "text_completion", "created": int(time.time()),
                            "model": body["model"], "choices": choices, "usage": usage})

    # -- model --------------------------------------------------------------------------
    def _encode(self, prompt: str | list[int], add_special: bool) -> tuple[str, list[int], list[int]]:
        """Prompt text, token ids and each token's character offset in the text."""
        if isinstance(prompt, str):
            enc = self.tokenizer(prompt, add_special_tokens=add_special, return_offsets_mapping=True)
            return prompt, enc["input_ids"], [start for start, _ in enc["offset_mapping"]]
        pieces = [self.tokenizer.decode([t]) for t in prompt]  # token ids: offsets as vLLM counts them
        offsets = [sum(len(p) for p in pieces[:j]) for j in range(len(pieces))]
        return self.tokenizer.decode(prompt), list(prompt), offsets

    def _choice(self, index, text, ids, offsets, echo, max_tokens, logprobs, prompt_logprobs) -> dict[str, Any]:
        import torch

        with torch.inference_mode():
            lp = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        gen = [int(lp[-1].argmax())] if max_tokens else []
        gen_text = self.tokenizer.decode(gen)
        choice: dict[str, Any] = {"index": index, "text": (text if echo else "") + gen_text, "finish_reason": "length",
                                  "logprobs": None, "prompt_token_ids": ids}
        if logprobs is not None:
            # (token, distribution it was drawn from or None, character offset)
            steps = [(t, lp[j - 1] if j else None, offsets[j]) for j, t in enumerate(ids)] if echo else []
            steps += [(g, lp[-1], len(text) if echo else 0) for g in gen]
            choice["logprobs"] = {
                "tokens": [self.tokenizer.decode([t]) for t, _, _ in steps],
                "token_logprobs": [None if row is None else float(row[t]) for t, row, _ in steps],
                "top_logprobs": [None if row is None else self._top(row, t, max(int(logprobs), 1)) for t, row, _ in steps],
                "text_offset": [off for _, _, off in steps],
            }
        if prompt_logprobs is not None:
            k = int(prompt_logprobs)
            choice["prompt_logprobs"] = [None] + [self._ranked(lp[j - 1], ids[j], k) for j in range(1, len(ids))]
        return choice

    def _top(self, row, token: int, k: int) -> dict[str, float]:
        top = {self.tokenizer.decode([int(t)]): float(v) for v, t in zip(*row.topk(k))}
        return {**top, self.tokenizer.decode([token]): float(row[token])}

    def _ranked(self, row, token: int, k: int) -> dict[str, dict[str, Any]]:
        wanted = [token] + [int(t) for t in row.topk(k).indices] if k else [token]
        return {str(t): {"logprob": float(row[t]), "rank": int((row > row[t]).sum()) + 1,
                         "decoded_token": self.tokenizer.decode([t])} for t in wanted}


# -- chat answers ---------------------------------------------------------------------------
# The paths that are model calls: latency and faults apply to these only.
MODEL_CALLS = ("/v1/completions", "/v1/chat/completions")


def request_digest(body: dict[str, Any]) -> bytes:
    """sha256 of the request's messages: the seed of every default answer."""
    return hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True, default=str).encode()).digest()


def default_chat_answer(body: dict[str, Any]) -> str:
    """The default `chat_handler`: a schema instance for a JSON schema in `response_format`
    (or, like an obedient model, in a system message), a digit 1-5 (then words) when
    log-probs are asked for (a judge), otherwise a plain sentence."""
    rng = random.Random(int.from_bytes(request_digest(body)[:8], "big"))
    messages = body.get("messages") or []
    words = _user_words(messages)
    schema = _response_schema(body.get("response_format")) or _prompted_schema(messages)
    if schema is not None:
        return json.dumps(schema_instance(schema, rng, words))
    sentence = _sentence(rng, words)
    if body.get("logprobs"):
        return f"{rng.choice(_DIGITS)} {sentence}"
    return sentence


def chat_completion(body: dict[str, Any], text: str | None, model_name: str) -> dict[str, Any]:
    """An OpenAI chat.completion object for `text`, cut at `max_tokens` words, with usage
    (whitespace word counts) and first-token top log-probs when asked for."""
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    finish = "stop"
    if text is not None and isinstance(limit, int) and limit > 0:
        cut = [m.end() for m in re.finditer(r"\S+", text)]
        if len(cut) > limit:
            text, finish = text[: cut[limit - 1]], "length"
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                              "finish_reason": finish, "logprobs": None}
    if body.get("logprobs") and text:
        choice["logprobs"] = {"content": _logprobs_content(text, int(body.get("top_logprobs") or 0), request_digest(body))}
    n_prompt = sum(len(str(m.get("content") or "").split()) + 3 for m in body.get("messages") or [])
    n_out = len(text.split()) if text else 0
    return {"id": f"chatcmpl-fake-{time.monotonic_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name, "choices": [choice],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}}


def first_token_distribution(text: str, digest: bytes) -> dict[str, float]:
    """The probabilities the server reports for the answer's first token (before the top-k cut).

    A digit 1-5 first: all five digits, plus the same digit with a leading space and two
    non-choice tokens; the answer's digit is the argmax. Otherwise the token and a few words.
    """
    rng = random.Random(int.from_bytes(digest[8:16], "big"))
    first = _TOKEN.match(text).group(0) if _TOKEN.match(text) else text[:1]
    if first in _DIGITS:
        weights = {d: rng.uniform(0.05, 1.0) for d in _DIGITS if d != first}
        weights[first] = max(weights.values()) * 1.5 + 0.1
        weights[" " + first] = weights[first] * 0.1
        weights["The"], weights["\n"] = 0.02, 0.01
    else:
        weights = {first: 3.0 + rng.random()}
        for word in rng.sample(_VOCAB, 4):
            weights.setdefault(word, rng.uniform(0.01, 0.5))
    total = sum(weights.values()) / 0.97  # the rest of the vocabulary holds 3%
    return {tok: w / total for tok, w in weights.items()}


def _logprobs_content(text: str, top_n: int, digest: bytes) -> list[dict[str, Any]]:
    dist = first_token_distribution(text, digest)
    ranked = sorted(dist.items(), key=lambda kv: -kv[1])[:top_n]
    tokens = _TOKEN.findall(text) or [text]
    content = []
    for j, token in enumerate(tokens):
        if j == 0:
            top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in ranked]
            logprob = math.log(dist[token]) if token in dist else -0.05
        else:
            logprob = -0.05
            top = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}][:top_n]
        content.append({"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": top})
    return content


def _response_schema(response_format: Any) -> dict[str, Any] | None:
    if isinstance(response_format, dict) and response_format.get("type") == "json_object":  # llama.cpp's form
        return response_format.get("schema") if isinstance(response_format.get("schema"), dict) else None
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    return spec.get("schema") if isinstance(spec, dict) and isinstance(spec.get("schema"), dict) else None


def _prompted_schema(messages: Sequence[Any]) -> dict[str, Any] | None:
    """A JSON schema quoted in a system message (the prompt-mode fallback puts it there)."""
    decoder = json.JSONDecoder()
    for m in messages:
        text = str(m.get("content") or "") if isinstance(m, dict) and m.get("role") == "system" else ""
        for start in [i for i, ch in enumerate(text) if ch == "{"][:50]:
            try:
                found, _ = decoder.raw_decode(text, start)
            except ValueError:
                continue
            if isinstance(found, dict) and ("properties" in found or "$defs" in found):
                return found
    return None


def _user_words(messages: Sequence[Any]) -> list[str]:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return _WORD.findall(str(m.get("content") or ""))[:200]
    return []


def _sentence(rng: random.Random, words: Sequence[str]) -> str:
    picked = [rng.choice(words) if words and rng.random() < 0.5 else rng.choice(_VOCAB) for _ in range(6 + rng.randrange(10))]
    return " ".join(picked).capitalize() + "."


# -- JSON schema instances ------------------------------------------------------------------
def schema_instance(schema: dict[str, Any], rng: random.Random, words: Sequence[str] = ()) -> Any:
    """A deterministic instance of a (pydantic v2) JSON schema: object/properties/required,
    $defs/$ref, anyOf/oneOf/allOf, enum, const, string (min/maxLength, a few formats),
    integer/number (inclusive/exclusive bounds), boolean, null, array (min/maxItems)."""
    return _Instances(schema, rng, list(words) or list(_VOCAB)).make(schema, 0)


class _Instances:
    def __init__(self, root: dict[str, Any], rng: random.Random, words: list[str]) -> None:
        self.root, self.rng, self.words = root, rng, words

    def resolve(self, ref: str) -> dict[str, Any]:
        node: Any = self.root
        for part in ref.lstrip("#").strip("/").split("/"):
            if part:
                node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def make(self, schema: Any, depth: int) -> Any:
        if not isinstance(schema, dict) or not schema:
            return self.string({})
        if "$ref" in schema:
            return self.make({**self.resolve(schema["$ref"]), **{k: v for k, v in schema.items() if k != "$ref"}}, depth)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = schema[key]
                concrete = [o for o in options if o.get("type") != "null"] or options
                return self.make(self.rng.choice(concrete) if depth < 4 else options[-1], depth + 1)
        if "allOf" in schema:
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged.update(self.resolve(part["$ref"]) if "$ref" in part else part)
            return self.make(merged, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, depth)
        return getattr(self, kind)(schema)

    def object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        required = set(schema.get("required", ()))
        return {name: self.make(sub, depth + 1) for name, sub in (schema.get("properties") or {}).items()
                if name in required or depth < 4}

    def array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        lo = int(schema.get("minItems", 0))
        hi = int(schema.get("maxItems", max(lo, 3)))
        n = min(max(lo, 1 + self.rng.randrange(3)), hi) if depth < 4 else lo
        prefix = schema.get("prefixItems") or []
        items = [self.make(prefix[i] if i < len(prefix) else schema.get("items", {}), depth + 1) for i in range(n)]
        if schema.get("uniqueItems"):
            seen: list[Any] = []
            for item in items:
                while item in seen:
                    item = f"{item}{len(seen)}" if isinstance(item, str) else item + 1 if isinstance(item, (int, float)) else item
                    if not isinstance(item, (str, int, float)):
                        break
                seen.append(item)
            items = seen
        return items

    def string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        if fmt in _FORMATS:
            return _FORMATS[fmt](self.rng)
        text = " ".join(self.rng.choice(self.words) for _ in range(1 + self.rng.randrange(6)))
        lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
        if hi is not None:
            text = text[: int(hi)]
        if len(text) < lo:
            text += "x" * (lo - len(text))
        return text

    def integer(self, schema: dict[str, Any]) -> int:
        lo, hi = _bounds(schema, 1)
        return self.rng.randint(math.ceil(lo), math.floor(hi))

    def number(self, schema: dict[str, Any]) -> float:
        lo, hi = _bounds(schema, 1e-6)
        return min(max(round(self.rng.uniform(lo, hi), 3), lo), hi)

    def boolean(self, schema: dict[str, Any]) -> bool:
        return self.rng.random() < 0.5

    def null(self, schema: dict[str, Any]) -> None:
        return None


def _bounds(schema: dict[str, Any], step: float) -> tuple[float, float]:
    lo = schema.get("minimum", schema["exclusiveMinimum"] + step if "exclusiveMinimum" in schema else None)
    hi = schema.get("maximum", schema["exclusiveMaximum"] - step if "exclusiveMaximum" in schema else None)
    lo = lo if lo is not None else (hi - 100 if hi is not None else 0)
    hi = hi if hi is not None else lo + 100
    return lo, hi


_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date-time": lambda r: f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:00:00Z",
    "date": lambda r: f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    "time": lambda r: f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00",
    "email": lambda r: f"user{r.randrange(1000)}@example.com",
    "uri": lambda r: f"https://example.com/{r.randrange(1000)}",
    "uuid": lambda r: "%08x-%04x-4%03x-8%03x-%012x" % (r.getrandbits(32), r.getrandbits(16), r.getrandbits(12),
                                                        r.getrandbits(12), r.getrandbits(48)),
}


# -- responses ------------------------------------------------------------------------------
class _BrokenBody:
    """A 200 body that is not a chat completion: cut in half, not JSON, or JSON without choices."""

    def __init__(self, kind: str, payload: Any) -> None:
        self.kind, self.payload = kind, payload

    def text(self) -> str:
        if self.kind == "bad_body:truncated":
            full = json.dumps(self.payload)
            return full[: len(full) // 2]
        if self.kind == "bad_body:not_json":
            return "<html><body>upstream proxy error</body></html>"
        return json.dumps({"id": "broken", "object": "chat.completion", "model": self.payload.get("model")})


def _to_response(reply: _Reply) -> web.Response:
    text = reply.payload.text() if isinstance(reply.payload, _BrokenBody) else json.dumps(reply.payload)
    return web.Response(text=text, status=reply.status, headers=reply.headers, content_type="application/json")


def _error(status: int, message: str, kind: str = "BadRequestError", headers: dict | None = None,
           fault: str | None = None) -> _Reply:
    body = {"object": "error", "message": message, "type": kind, "code": status}
    return _Reply(status, {"error": body}, headers, fault)


# -- command line ---------------------------------------------------------------------------
_HANDLERS = {"default": "ontask.testing.fake_server:default_chat_answer",
             "tcia": "ontask.testing.tcia_handler:tcia_chat_handler"}


def load_chat_handler(spec: str) -> ChatHandler:
    """A chat handler by name ("default", "tcia") or import path "module:function"."""
    import importlib

    module, _, attr = _HANDLERS.get(spec, spec).partition(":")
    if not attr:
        raise ValueError(f"unknown chat handler '{spec}': use {', '.join(_HANDLERS)} or MODULE:FUNCTION")
    return getattr(importlib.import_module(module), attr)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until killed; print the base URL (one line, flushed) once listening."""
    ap = argparse.ArgumentParser(prog="python -m ontask.testing.fake_server", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--model-dir", default=None, help="a transformers folder for /v1/completions (chat needs none)")
    ap.add_argument("--model-name", action="append", default=None,
                    help="a served model name (repeat, or separate with commas, for several; default tiny)")
    ap.add_argument("--chat-handler", default="default",
                    help="default, tcia (ontask.testing.tcia_handler), or MODULE:FUNCTION")
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fail-rate-500", type=float, default=0.0)
    ap.add_argument("--fail-rate-429", type=float, default=0.0)
    ap.add_argument("--fail-rate-bad-body", type=float, default=0.0)
    ap.add_argument("--fail-rate-timeout", type=float, default=0.0)
    ap.add_argument("--retry-after", type=float, default=0.05)
    ap.add_argument("--timeout-delay", type=float, default=30.0)
    ap.add_argument("--max-concurrent", type=int, default=None, help="answer 429 to requests above this many in flight")
    ap.add_argument("--reject-response-format", action="store_true")
    ap.add_argument("--log", default=None, help="append a JSONL line per answered request")
    ap.add_argument("--batch-delay", type=float, default=0.0, help="seconds from a batch's creation to its end")
    ap.add_argument("--batch-fail-rate", type=float, default=0.0, help="requests failing inside a batch")
    ap.add_argument("--batch-expire", type=int, default=0, help="the first N batches created expire half done")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    names = [n for arg in args.model_name or ["tiny"] for n in arg.split(",") if n]
    with FakeServer(args.model_dir, model_name=names, chat_handler=load_chat_handler(args.chat_handler),
                    latency=args.latency, fail_rate_500=args.fail_rate_500,
                    fail_rate_429=args.fail_rate_429, fail_rate_bad_body=args.fail_rate_bad_body,
                    fail_rate_timeout=args.fail_rate_timeout, retry_after=args.retry_after,
                    timeout_delay=args.timeout_delay, max_concurrent=args.max_concurrent,
                    reject_response_format=args.reject_response_format,
                    log_path=args.log, seed=args.seed, host=args.host, port=args.port,
                    batch_delay=args.batch_delay, batch_fail_rate=args.batch_fail_rate,
                    batch_expire=args.batch_expire) as srv:
        print(srv.base_url, flush=True)
        while not stop.wait(1.0):
            pass
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""A small OpenAI-compatible completions server over a local transformers model.

For tests and benchmarks of the server scorer: it answers like vLLM (legacy completions
with `echo` + `logprobs`, vLLM's `prompt_logprobs` extension, `/tokenize`), with
log-probabilities from a plain full-logits forward pass (a reference, independent of
ontask's own scorer), and can inject latency, 500s and 429s.

    with FakeServer(model_dir=tiny_dir, latency=0.05) as srv:
        client = AsyncOpenAI(base_url=srv.base_url, api_key="EMPTY")
        ... len(srv.requests) ...
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web


class FakeServer:
    """Serves `model_dir` on 127.0.0.1 (a free port) from a background thread."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        model_name: str = "tiny",
        latency: float = 0.0,
        fail_rate_500: float = 0.0,
        fail_rate_429: float = 0.0,
        retry_after: float = 0.05,
        seed: int = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.max_model_len = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.model_name = model_name
        self.latency, self.retry_after = latency, retry_after
        self.fail_rate_500, self.fail_rate_429 = fail_rate_500, fail_rate_429
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._log: list[dict[str, Any]] = []
        self.base_url = ""

    # -- request log --------------------------------------------------------------------
    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request received so far (`path`, `body`), failed ones included."""
        with self._lock:
            return list(self._log)

    def count(self, path: str = "/v1/completions") -> int:
        return sum(1 for r in self.requests if r["path"] == path)

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> "FakeServer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        ready, failure = threading.Event(), []

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            runner = web.AppRunner(self._app())
            try:
                self._loop.run_until_complete(runner.setup())
                self._loop.run_until_complete(web.SockSite(runner, sock).start())
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

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/tokenize", self._tokenize)
        return app

    # -- handlers -----------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        self._record(request.path, None)
        model = {"id": self.model_name, "object": "model", "owned_by": "ontask-fake", "max_model_len": self.max_model_len}
        return web.json_response({"object": "list", "data": [model]})

    async def _admit(self, request: web.Request) -> dict | web.Response:
        """Parse and log the body, then apply the injected latency and faults."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        self._record(request.path, body)
        if self.latency:
            await asyncio.sleep(self.latency)
        with self._lock:
            draw = self._rng.random()
        if draw < self.fail_rate_500:
            return _error(500, "injected internal server error", "InternalServerError")
        if draw < self.fail_rate_500 + self.fail_rate_429:
            headers = {"Retry-After": str(math.ceil(self.retry_after)), "retry-after-ms": str(int(self.retry_after * 1000))}
            return _error(429, "injected rate limit", "RateLimitError", headers)
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        if body.get("model") != self.model_name:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        return body

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await self._admit(request)
        if isinstance(body, web.Response):
            return body
        ids = self.tokenizer(body.get("prompt", ""), add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
        return web.json_response({"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids, "token_strs": None})

    async def _completions(self, request: web.Request) -> web.Response:
        body = await self._admit(request)
        if isinstance(body, web.Response):
            return body
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
        return web.json_response({"id": f"cmpl-fake-{time.monotonic_ns()}", "object": "text_completion", "created": int(time.time()),
                                  "model": self.model_name, "choices": choices, "usage": usage})

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

    def _record(self, path: str, body: Any) -> None:
        with self._lock:
            self._log.append({"path": path, "body": body})


def _error(status: int, message: str, kind: str = "BadRequestError", headers: dict | None = None) -> web.Response:
    body = {"object": "error", "message": message, "type": kind, "code": status}
    return web.json_response({"error": body}, status=status, headers=headers)

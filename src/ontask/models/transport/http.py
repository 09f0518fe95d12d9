"""One HTTP stack for every remote provider: aiohttp, JSON bodies posted as bytes, answers read raw.

Why aiohttp and not the `openai` SDK: profiling showed the SDK spending ~0.8 ms of CPU
building each request (a third of the client's time at 1,000 calls and 64 in flight on 2
cores), and its retries and typed objects go unused: retries are the retry policy's, load
is rate control's, and bodies are parsed here so a broken one is seen as such. Chat and
scoring share the session set-up, the error mapping and the server's own words for an
error; the API key is sent as a bearer token and never appears in a message.

Errors are three exceptions a caller maps to its failure values: `HTTPStatusError` (the
server answered >= 400: status, its message, headers for Retry-After), `TimedOut`, and
`Unreachable` (refused, reset, disconnected, a torn body).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from .endpoint import run_sync


class HTTPStatusError(Exception):
    def __init__(self, status: int, message: str, headers: Any) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.headers = status, message, headers


class TimedOut(Exception):
    pass


class Unreachable(Exception):
    pass


def session(api_key: str, connections: int) -> aiohttp.ClientSession:
    """A pooled session (one per call: a session belongs to the event loop that made it), a
    connection per slot so no admitted request waits for one."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key and api_key != "EMPTY":
        headers["Authorization"] = f"Bearer {api_key}"
    return aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=max(1, connections)),
                                 timeout=aiohttp.ClientTimeout(total=None))


async def post(client: aiohttp.ClientSession, url: str, body: Any, timeout: float) -> tuple[int, Any, bytes]:
    """POST `body` as JSON; (status, headers, raw body). Raises `TimedOut` / `Unreachable`."""
    parts = urlsplit(url)
    if (parts.username or parts.password) and "Authorization" in client.headers:
        # credentials in the URL and an API key: the key is the credential (aiohttp takes one)
        url = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, parts.fragment))
    try:
        async with asyncio.timeout(timeout):
            async with client.post(url, data=json.dumps(body).encode()) as response:
                return response.status, response.headers, await response.read()
    except TimeoutError:
        raise TimedOut(f"no answer within the {timeout:g}s timeout") from None
    except aiohttp.ClientError as exc:  # refused, reset, disconnected, a torn body
        raise Unreachable(f"{type(exc).__name__}: {exc}") from None


async def post_json(client: aiohttp.ClientSession, url: str, body: Any, timeout: float) -> Any:
    """POST and parse the JSON answer; >= 400 raises `HTTPStatusError`, a body that is not
    JSON raises `ValueError` (a broken body)."""
    status, headers, content = await post(client, url, body, timeout)
    if status >= 400:
        raise HTTPStatusError(status, error_message(content), headers)
    try:
        return json.loads(content)
    except ValueError:
        raise ValueError(f"broken response body (not JSON; {len(content)} bytes)") from None


def post_json_sync(url: str, body: Any, *, api_key: str, timeout: float) -> Any:
    """`post_json` from synchronous code (one-off calls: a server's template, a token count)."""

    async def once() -> Any:
        async with session(api_key, 1) as client:
            return await post_json(client, url, body, timeout)

    return run_sync(once)


def error_message(content: bytes) -> str:
    """The server's own words for an error: `error.message` of a JSON body (or FastAPI's
    `detail`), else the text."""
    text = content.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body))
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            return str(msg)[:500]
    return text[:500]

"""What every OpenAI-compatible backend (scorer or chat) needs about its server.

Where the server is and its key (arguments, else ONTASK_* then OPENAI_* environment
variables), the address with credentials and query string removed (safe for run.json,
logs and error messages), and how synchronous callers drive the async client: with
`asyncio.run`, or on a loop of its own in a worker thread when the caller is itself
inside a running event loop (a notebook, an async app).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from typing import Awaitable, Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")


def resolve_base_url(base_url: str | None) -> str:
    """The server address without a trailing slash; a clear error when there is none."""
    url = base_url or os.environ.get("ONTASK_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
    if not url:
        raise ValueError("openai:MODEL needs a server address: pass base_url (e.g. http://localhost:8000/v1) "
                         "or set ONTASK_BASE_URL")
    return url.rstrip("/")


def resolve_api_key(api_key: str | None) -> str:
    """The key to send ("EMPTY" for servers that take none). Never log or store it."""
    return api_key or os.environ.get("ONTASK_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"


def public_url(url: str) -> str:
    """The URL without credentials or query string (they may carry keys)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def scrub_key(text: str, key: str) -> str:
    """Belt and braces: no error text ever carries the API key."""
    return text.replace(key, "***") if key and key != "EMPTY" and len(key) >= 4 else text


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine `make()` to completion from synchronous code, inside a running loop too."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from async code: a loop of its own
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]



"""Prompt templates (Jinja2 files in `prompts/`) rendered into chat messages.

A template holds the system message, a line `=== user ===`, then the user message. The
rendered text is part of every cache key, so editing a template can never hit a stale
answer. Values are inserted verbatim (no HTML escaping: these are model prompts) and an
undefined variable is an error, not an empty string.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2

_SPLIT = "=== user ==="


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    """The templates ship with the package: loaded once, never checked for changes (Jinja's
    `auto_reload` would stat each template file twice on every render: thousands of times a
    run, on the event loop that sends the requests)."""
    return jinja2.Environment(loader=jinja2.PackageLoader("ontask.tcia", "prompts"), undefined=jinja2.StrictUndefined,
                              autoescape=False, trim_blocks=False, keep_trailing_newline=False, auto_reload=False)


def messages(name: str, **variables: Any) -> tuple[dict[str, str], ...]:
    """Render `prompts/<name>.jinja` into (system, user) messages."""
    text = _env().get_template(f"{name}.jinja").render(**variables)
    system, sep, user = text.partition(_SPLIT)
    if not sep:
        return ({"role": "user", "content": text.strip()},)
    return ({"role": "system", "content": system.strip()}, {"role": "user", "content": user.strip()})


def templates_digest() -> str:
    """Hash of every template's source, for run.json."""
    h = hashlib.sha256()
    folder = resources.files("ontask.tcia") / "prompts"
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".jinja"):
            h.update(entry.name.encode() + b"\0" + entry.read_bytes())
    return h.hexdigest()[:16]

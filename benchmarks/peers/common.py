"""Shared by the client scripts of bench_orchestration.py (stdlib only: it runs in both venvs).

Every client script reads the same prompts file (a JSON list of {"system", "user"}), sends
one chat call per prompt, and prints one line `RESULT {json}` on stdout with at least
`client`, `wall_s` (the client's own call, imports and set-up excluded), `ok` (rows with an
answer), `total` and `settings` (a short description of how the client was configured).
"""

from __future__ import annotations

import json
import sys
from typing import Any

MODEL = "tiny"  # the fake server's model name
MAX_TOKENS = 256


def load_prompts(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def messages(prompt: dict[str, str]) -> list[dict[str, str]]:
    return [{"role": "system", "content": prompt["system"]}, {"role": "user", "content": prompt["user"]}]


def report(**fields: Any) -> None:
    sys.stdout.write("RESULT " + json.dumps(fields) + "\n")
    sys.stdout.flush()

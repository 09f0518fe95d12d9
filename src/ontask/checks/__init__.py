"""Code-checked constraints: IFEval's instruction checkers (from lm-eval) and the mapping
from constraint sentences to them.

`check(instruction_id, kwargs, response)` runs one checker; `CHECKERS` lists them (built
on first access, since it imports lm-eval). See `library` for which library and why it
works offline.
"""

from __future__ import annotations

from typing import Any

from .library import CheckerInfo, CheckResult, check, checkers, library_version

CHECKERS: dict[str, CheckerInfo]  # built on first access, by `__getattr__` below

__all__ = ["CHECKERS", "CheckerInfo", "CheckResult", "check", "checkers", "library_version"]


def __getattr__(name: str) -> Any:
    if name == "CHECKERS":
        return checkers()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The row types every stage passes around.

An `Example` is one (instruction, input, output) triple read from a user's file, with the
original fields kept verbatim so that outputs can carry them through untouched. A
`Failure` is a row (or call) that could not be used, with the place and the reason: it is
written to `failed.jsonl`, never silently dropped and never turned into a default value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Location:
    """Where a row came from: file, 1-based line (or row number), optional sub-item."""

    file: str
    line: int
    item: str | None = None  # e.g. "instances[2]" for Self-Instruct rows

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where} {self.item}" if self.item else where


@dataclass(frozen=True, slots=True)
class Example:
    """One training row: the three texts ontask reasons about plus the row as read."""

    instruction: str
    input: str
    output: str
    loc: Location
    fields: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Failure:
    """A row that cannot be used, and why. `field` names the offending column if any."""

    loc: Location
    reason: str
    field: str | None = None
    stage: str = "read"

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.loc.file,
            "line": self.loc.line,
            "item": self.loc.item,
            "field": self.field,
            "stage": self.stage,
            "reason": self.reason,
        }


class InputError(ValueError):
    """Input that cannot be read at all (unknown format, no usable columns).

    Row-level problems become `Failure`s instead; this is for problems that make the
    whole file unusable, and its message always names the file (and line/field if known).
    """

    def __init__(self, file: str, reason: str, line: int | None = None, field: str | None = None):
        self.file, self.reason, self.line, self.field = file, reason, line, field
        where = file if line is None else f"{file}:{line}"
        if field:
            where += f" (field '{field}')"
        super().__init__(f"{where}: {reason}")


def settings_error(err: Exception) -> str:
    """A settings error in words, `field: message` per problem, not pydantic's dump (the CLI
    and the Python API both report bad settings this way)."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return str(err)
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = "unknown setting" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def as_number(value: Any) -> float | None:
    """A finite score from a row, or None: numbers as they are, and numeric text, which is
    how a CSV file (ontask writes one on request) carries every score; never a bool."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)

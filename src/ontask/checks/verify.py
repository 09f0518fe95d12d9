"""Verify a response against constraint sentences: map each to checkers, run them, combine.

A constraint passes when every checker it maps to passes, fails when any fails, and is
unchecked (None) when no checker applies or a checker could not run; the judge decides
those. Results carry the checkers and their reasons, so a dropped row says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

from .library import check
from .mapper import CheckSpec, map_constraint


@dataclass
class ConstraintCheck:
    constraint: str
    passed: bool | None
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reason(self) -> str:
        failed = [c for c in self.checks if c["passed"] is False]
        return "; ".join(f"{c['instruction_id']} {c['kwargs']}" for c in failed) if failed else ""

    def to_json(self) -> dict[str, Any]:
        return {"constraint": self.constraint, "passed": self.passed, "checks": self.checks}


def check_constraints(constraints: Sequence[str], response: str, prompt: str | None = None) -> list[ConstraintCheck]:
    """One result per constraint, aligned with `constraints`."""
    return [_one(text, _mapped(text, prompt), response, prompt) for text in constraints]


@lru_cache(maxsize=4096)
def _mapped(text: str, prompt: str | None) -> tuple[CheckSpec, ...]:
    """`map_constraint`, once per (constraint, instruction): every answer to one instruction
    (each input, each responder) is checked against the same constraints, and the mapping
    (a few dozen regular expressions per sentence) was most of what a check cost."""
    return tuple(map_constraint(text, prompt))


def _one(text: str, specs: Sequence[CheckSpec], response: str, prompt: str | None) -> ConstraintCheck:
    if not specs:
        return ConstraintCheck(text, None)
    results = []
    for s in specs:
        r = check(s.instruction_id, dict(s.kwargs), response, prompt=prompt)
        results.append({"instruction_id": s.instruction_id, "kwargs": dict(s.kwargs), "passed": r.passed,
                        "reason": r.reason})  # a copy: the specs are shared by every answer checked
    if any(r["passed"] is False for r in results):
        passed: bool | None = False
    elif all(r["passed"] is True for r in results):
        passed = True
    else:
        passed = None
    return ConstraintCheck(text, passed, results)

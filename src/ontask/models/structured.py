"""Parse a model's answer into a validated object: strict first, then repaired, else a reason.

Backends call `parse_structured` on every answer for a request with a `response_model`.
Strict JSON that validates is taken as is. Otherwise the text is repaired (code fences
and chatter around the object stripped; quotes, commas and brackets fixed by the
`json_repair` library) and validated again. If that still fails, `StructuredError`
carries a short, specific reason that the backend can send back to the model when it
re-asks, and that ends up in failed.jsonl if the re-asks run out.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class StructuredError(ValueError):
    """The answer could not be turned into a valid object."""


def parse_structured(text: str, model: type[BaseModel]) -> tuple[dict[str, Any], bool]:
    """(validated object as a dict, whether repair was needed) or raise StructuredError."""
    if not text or not text.strip():
        raise StructuredError("empty answer")
    try:
        return _validate(json.loads(text), model), False
    except (json.JSONDecodeError, StructuredError) as first:
        strict_error = first
    candidate = _extract(text)
    try:
        import json_repair

        data = json_repair.loads(candidate)
    except Exception as exc:  # json_repair raises rarely; any failure is a parse failure
        raise StructuredError(f"not JSON ({exc})") from None
    if data in ("", None, [], {}) and candidate.strip() not in ("{}", "[]"):
        raise StructuredError(f"not JSON: {_short(strict_error)}")
    return _validate(data, model), True


def _validate(data: Any, model: type[BaseModel]) -> dict[str, Any]:
    try:
        return model.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise StructuredError(f"does not match the schema: {problems}") from None


def _extract(text: str) -> str:
    """The likeliest JSON object in a chatty answer: a fenced block, else first { to last }."""
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        return text[start : end + 1]
    return text[start:] if start != -1 else text


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]

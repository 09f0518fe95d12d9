"""The discrete instruction space TCIA explores: (task type, base query, constraint set).

An instruction is a point: a fixed task type T, a fixed base query Q and a *set* of
atomic constraints C. Two states are the same when their normalised constraint sets are
equal (order and case do not matter), so every state gets a canonical hash and the
search deduplicates on it. Everything here is pure and immutable.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Literal

CATEGORIES = ("Content", "Numerical", "Style/Tone", "Format", "Language", "Input Placeholder")
Category = Literal["Content", "Numerical", "Style/Tone", "Format", "Language", "Input Placeholder"]

_ALIASES = {
    "content": "Content", "topic": "Content", "scope": "Content", "inclusion": "Content",
    "numerical": "Numerical", "numeric": "Numerical", "number": "Numerical", "length": "Numerical",
    "count": "Numerical", "quantity": "Numerical",
    "style": "Style/Tone", "tone": "Style/Tone", "style/tone": "Style/Tone", "styletone": "Style/Tone",
    "style and tone": "Style/Tone", "persona": "Style/Tone", "voice": "Style/Tone",
    "format": "Format", "formatting": "Format", "structure": "Format", "layout": "Format",
    "language": "Language", "lang": "Language", "linguistic": "Language",
    "input placeholder": "Input Placeholder", "input": "Input Placeholder", "placeholder": "Input Placeholder",
    "input placeholders": "Input Placeholder",
}
_SUFFIX = re.compile(r"\b(constraints?|requirements?|rules?|type|category)\b", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def normalise_category(raw: str) -> str:
    """Map what a model writes ("Format Constraints", "style & tone") to one of CATEGORIES.

    Raises ValueError for anything unrecognisable, so a bad decomposition is reported
    rather than filed under a guess.
    """
    text = _SPACE.sub(" ", _SUFFIX.sub("", raw.replace("&", " and ").replace("_", " "))).strip(" :-.").lower()
    if text in _ALIASES:
        return _ALIASES[text]
    for cat in CATEGORIES:
        if text == cat.lower():
            return cat
    compact = text.replace(" ", "")
    for alias, cat in _ALIASES.items():
        if compact == alias.replace(" ", ""):
            return cat
    words = {w for w in re.split(r"[\s/,]+|\band\b", text) if w}  # "tone and style", "style, tone"
    hits = {_ALIASES[w] for w in words if w in _ALIASES}
    if len(hits) == 1:
        return hits.pop()
    raise ValueError(f"unknown constraint category '{raw}' (expected one of {', '.join(CATEGORIES)})")


@lru_cache(maxsize=1 << 16)
def normalise_text(text: str) -> str:
    """Identity of a constraint's text: NFKC, case-folded, spaces collapsed, end punctuation off.
    (Cached: the search asks it of the same few hundred texts tens of thousands of times,
    for every state it builds and hashes, which was half of what the search cost.)"""
    text = unicodedata.normalize("NFKC", text)
    return _SPACE.sub(" ", text).strip().rstrip(".;!").strip().casefold()


@dataclass(frozen=True, slots=True)
class Constraint:
    """One atomic requirement ("Use at most 5 bullet points") and its category."""

    text: str
    category: str = "Content"

    @property
    def key(self) -> str:
        return normalise_text(self.text)

    def to_json(self) -> dict[str, str]:
        return {"text": self.text, "category": self.category}


@dataclass(frozen=True, slots=True)
class InstructionState:
    """(T, Q, C, languages). Build with `InstructionState.make`, which canonicalises C."""

    task_type: str
    base_query: str
    constraints: tuple[Constraint, ...]
    languages: tuple[str, ...] = ("en",)

    @staticmethod
    def make(task_type: str, base_query: str, constraints: Iterable[Constraint], languages: Iterable[str] = ("en",)) -> "InstructionState":
        """Canonical form: constraints unique by normalised text (first kept), sorted by it."""
        unique: dict[str, Constraint] = {}
        for c in constraints:
            if c.key and c.key not in unique:
                unique[c.key] = c
        ordered = tuple(unique[k] for k in sorted(unique))
        return InstructionState(task_type.strip(), base_query.strip(), ordered, tuple(sorted(set(languages))) or ("en",))

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(c.key for c in self.constraints)

    @property
    def state_hash(self) -> str:
        """Canonical identity: normalised T, Q and constraint set (not order, not category)."""
        blob = json.dumps([normalise_text(self.task_type), normalise_text(self.base_query), sorted(self.keys)],
                          ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def has(self, constraint: Constraint) -> bool:
        return constraint.key in self.keys

    def without(self, constraint: Constraint) -> "InstructionState":
        return InstructionState.make(self.task_type, self.base_query,
                                     (c for c in self.constraints if c.key != constraint.key), self.languages)

    def with_added(self, constraint: Constraint) -> "InstructionState":
        return InstructionState.make(self.task_type, self.base_query, (*self.constraints, constraint), self.languages)

    def to_json(self) -> dict:
        return {"task_type": self.task_type, "base_query": self.base_query,
                "constraints": [c.to_json() for c in self.constraints], "languages": list(self.languages)}

    @staticmethod
    def from_json(d: dict) -> "InstructionState":
        return InstructionState.make(d["task_type"], d["base_query"],
                                     (Constraint(c["text"], c.get("category", "Content")) for c in d.get("constraints", [])),
                                     d.get("languages") or ("en",))


Op = Literal["add", "remove", "replace"]


@dataclass(frozen=True, slots=True)
class Edit:
    """One step of the search: what was removed and/or added."""

    op: Op
    removed: Constraint | None = None
    added: Constraint | None = None

    def to_json(self) -> dict:
        return {"op": self.op, "removed": self.removed.text if self.removed else None,
                "added": self.added.text if self.added else None}


@dataclass(frozen=True, slots=True)
class Node:
    """A state reached by the search, with its lineage from the seed."""

    state: InstructionState
    hop: int
    path: tuple[Edit, ...] = field(default=())
    parent: str | None = None  # parent state's hash

    @property
    def state_hash(self) -> str:
        return self.state.state_hash

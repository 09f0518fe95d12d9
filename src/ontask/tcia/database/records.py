"""Records of the constraint database: parsing and checking rows (task type, base query,
constraints), the errors that name the row and field, and the tally of distinct texts."""

from __future__ import annotations


from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

from ..state import CATEGORIES, Constraint
from .common import norm_category, norm_text


class EmbedderLike(Protocol):
    """What the builder needs from `ontask.embed.Embedder`: a name and normalised rows."""

    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class RecordError(ValueError):
    """A decomposed record that cannot go into the database; names the record and field."""

    def __init__(self, index: int, field: str, reason: str) -> None:
        self.index, self.field, self.reason = index, field, reason
        super().__init__(f"record {index}: field '{field}': {reason}")


class DatabaseError(ValueError):
    """A saved database that cannot be used (missing, corrupt, other version or embedder)."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class DBRecord:
    """One decomposed instruction as the database sees it: T, Q and C (with simplified queries)."""

    task_type: str
    base_query: str
    constraints: tuple[Constraint, ...]
    simplified: tuple[str | None, ...]  # parallel to constraints

    @staticmethod
    def parse(raw: Mapping[str, Any] | "DBRecord", index: int) -> "DBRecord":
        """Validate one record; raises RecordError naming `index` and the offending field."""
        if isinstance(raw, DBRecord):
            return raw
        if not isinstance(raw, Mapping):
            raise RecordError(index, "<record>", f"expected an object, got {type(raw).__name__}")
        task_type = _required_text(raw, "task_type", index)
        base_query = raw.get("base_query", "")
        if base_query is None:
            base_query = ""
        if not isinstance(base_query, str):
            raise RecordError(index, "base_query", f"expected a string, got {type(base_query).__name__}")
        items = raw.get("constraints")
        if items is None:
            raise RecordError(index, "constraints", "missing (use [] for an instruction without constraints)")
        if not isinstance(items, (list, tuple)):
            raise RecordError(index, "constraints", f"expected a list, got {type(items).__name__}")
        parsed = [_parse_constraint(item, index, j) for j, item in enumerate(items)]
        return DBRecord(task_type, base_query.strip(), tuple(c for c, _ in parsed), tuple(s for _, s in parsed))


def _required_text(raw: Mapping[str, Any], field: str, index: int, where: str | None = None) -> str:
    name = where or field
    if field not in raw or raw[field] is None:
        raise RecordError(index, name, "missing")
    value = raw[field]
    if not isinstance(value, str):
        raise RecordError(index, name, f"expected a string, got {type(value).__name__}")
    if not norm_text(value):
        raise RecordError(index, name, "empty")
    return value.strip()


def _parse_constraint(item: Any, index: int, j: int) -> tuple[Constraint, str | None]:
    where = f"constraints[{j}]"
    if isinstance(item, Constraint):
        return item, None
    if not isinstance(item, Mapping):
        raise RecordError(index, where, f"expected an object with 'text' and 'category', got {type(item).__name__}")
    text = _required_text(item, "text", index, f"{where}.text")
    raw_cat = item.get("category")
    if not isinstance(raw_cat, str):
        raise RecordError(index, f"{where}.category", "missing" if raw_cat is None else "expected a string")
    try:
        category = norm_category(raw_cat)
    except ValueError as exc:
        raise RecordError(index, f"{where}.category", str(exc)) from None
    simplified = item.get("simplified_query")
    if simplified is not None and not isinstance(simplified, str):
        raise RecordError(index, f"{where}.simplified_query", "expected a string or null")
    return Constraint(text, category), (simplified.strip() or None) if simplified else None


def parse_records(records: Iterable[Mapping[str, Any] | DBRecord]) -> list[DBRecord]:
    """Validate every record (the first bad one raises RecordError)."""
    return [DBRecord.parse(r, i) for i, r in enumerate(records)]


# --------------------------------------------------------------------------- tally


@dataclass
class Tally:
    """Distinct task types / constraints and their co-occurrence, gathered in one pass."""

    type_ids: dict[str, int]
    type_texts: list[str]
    type_records: list[int]
    con_ids: dict[str, int]
    con_texts: list[str]
    con_records: list[int]
    con_cats: list[list[int]]
    simplified: list[str | None]
    pairs: dict[tuple[int, int], int]
    n_records: int


def tally(records: Iterable[Mapping[str, Any] | DBRecord]) -> Tally:
    t = Tally({}, [], [], {}, [], [], [], [], {}, 0)
    cat_index = {c: i for i, c in enumerate(CATEGORIES)}
    for index, raw in enumerate(records):
        rec = DBRecord.parse(raw, index)
        t.n_records += 1
        tid = _intern(t.type_ids, t.type_texts, norm_text(rec.task_type), rec.task_type)
        if tid == len(t.type_records):
            t.type_records.append(0)
        t.type_records[tid] += 1
        seen: set[int] = set()
        for con, simp in zip(rec.constraints, rec.simplified):
            cid = _intern(t.con_ids, t.con_texts, norm_text(con.text), con.text)
            if cid == len(t.con_records):
                t.con_records.append(0)
                t.con_cats.append([0] * len(CATEGORIES))
                t.simplified.append(None)
            if cid in seen:
                continue
            seen.add(cid)
            t.con_records[cid] += 1
            t.con_cats[cid][cat_index.get(con.category, 0)] += 1
            if simp and t.simplified[cid] is None:
                t.simplified[cid] = simp
            t.pairs[(tid, cid)] = t.pairs.get((tid, cid), 0) + 1
    return t


def _intern(ids: dict[str, int], texts: list[str], key: str, text: str) -> int:
    found = ids.get(key)
    if found is None:
        found = ids[key] = len(texts)
        texts.append(text)
    return found


# --------------------------------------------------------------------------- build

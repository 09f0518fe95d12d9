"""Read what augmentation starts from: seed instructions, the input pool, corpus records.

Any format `ontask.io` reads (JSONL, JSON, Parquet, CSV, saved HF datasets). A seed row
has an instruction (`instruction`, `seed`, `prompt` or `text`) and may also carry its own
decomposition (`task_type`, `base_query`, `constraints`), which then skips step 1. An
input row has the text in `input`, `text`, `context`, `document` or `transcript` (or the
field named by `field`). Errors name the file, line and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..io.formats import iter_records
from ..records import Failure, InputError
from .pipeline import Seed
from .state import Constraint, InstructionState, normalise_category

SEED_FIELDS = ("instruction", "seed", "prompt", "text")
INPUT_FIELDS = ("input", "text", "context", "document", "transcript")


def _rows(path: str | Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    for chunk in iter_records(path):
        for loc, rec in chunk:
            if isinstance(rec, Failure):
                raise InputError(loc.file, rec.reason, line=loc.line)
            yield loc, rec


def _pick(rec: dict[str, Any], names: tuple[str, ...], loc, what: str, field: str | None = None) -> str:
    keys = (field,) if field else names
    for k in keys:
        v = rec.get(k)
        if isinstance(v, str) and v.strip():
            return v
    raise InputError(loc.file, f"no {what}: expected a non-empty string field "
                               f"{' or '.join(repr(k) for k in keys)}", line=loc.line, field=keys[0])


def state_from_record(rec: dict[str, Any], loc) -> InstructionState | None:
    """The decomposition a record carries, or None; malformed ones are InputErrors."""
    if "task_type" not in rec and "constraints" not in rec:
        return None
    for name in ("task_type", "base_query"):
        if not isinstance(rec.get(name), str) or not rec[name].strip():
            raise InputError(loc.file, f"'{name}' must be a non-empty string", line=loc.line, field=name)
    raw = rec.get("constraints")
    if not isinstance(raw, list):
        raise InputError(loc.file, "'constraints' must be a list", line=loc.line, field="constraints")
    cons = []
    for j, c in enumerate(raw):
        where = f"constraints[{j}]"
        if isinstance(c, str):
            c = {"text": c, "category": "Content"}
        if not isinstance(c, dict) or not isinstance(c.get("text"), str) or not c["text"].strip():
            raise InputError(loc.file, "a constraint needs a non-empty 'text'", line=loc.line, field=where)
        try:
            cat = normalise_category(str(c.get("category", "Content")))
        except ValueError as err:
            raise InputError(loc.file, str(err), line=loc.line, field=f"{where}.category") from None
        cons.append(Constraint(c["text"].strip(), cat))
    langs = rec.get("languages") or ["en"]
    if isinstance(langs, str):
        langs = [langs]
    if not isinstance(langs, list) or not all(isinstance(x, str) and x.strip() for x in langs):
        raise InputError(loc.file, "'languages' must be a list of ISO 639-1 codes", line=loc.line, field="languages")
    langs = [x.strip().replace("_", "-").split("-")[0].lower() for x in langs]
    return InstructionState.make(rec["task_type"], rec["base_query"], cons, langs)


def read_seeds(path: str | Path) -> list[Seed]:
    out = []
    for loc, rec in _rows(path):
        state = state_from_record(rec, loc)
        text = _pick(rec, SEED_FIELDS, loc, "seed instruction") if state is None else (
            next((rec[k] for k in SEED_FIELDS if isinstance(rec.get(k), str) and rec[k].strip()), state.base_query))
        out.append(Seed(text, state, source=str(loc)))
    if not out:
        raise InputError(str(path), "no seed instructions in the file")
    return out


def read_inputs(path: str | Path, field: str | None = None) -> list[str]:
    out = [_pick(rec, INPUT_FIELDS, loc, "input text", field) for loc, rec in _rows(path)]
    if not out:
        raise InputError(str(path), "the input pool is empty")
    return out

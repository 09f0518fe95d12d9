"""Decompose a file of instructions chunk by chunk (for `ontask decompose` and `ontask db build`),
and measure a decomposer against gold data (`ontask eval decompose`).

Streaming: rows are read, decomposed and written one chunk at a time, so a million-row
corpus needs memory for one chunk only; every answer is in the cache the moment it
arrives, so an interrupted run resumes for free. A row whose decomposition fails is
written to failed.jsonl with its file, line and reason; it is never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..models import GenError, Generator
from ..io.formats import iter_records
from ..io.slicing import sliced
from ..records import Failure
from .decompose import decompose
from .schemas import Decomposition
from .sources import SEED_FIELDS, state_from_record


@dataclass
class Decomposed:
    """One input row and its decomposition (or the failure)."""

    file: str
    line: int
    record: dict[str, Any]
    instruction: str | None
    result: dict[str, Any] | None = None
    failure: str | None = None


def iter_decomposed(path: str | Path, model: Callable[[], Generator] | None, *, field: str | None = None, chunk_size: int = 256,
                    max_tokens: int = 384, tick: Callable[[int], None] | None = None, limit: int | None = None,
                    sample: int | None = None, seed: int = 0) -> Iterator[list[Decomposed]]:
    """Yield chunks of decomposed rows. Rows that already carry a decomposition are passed through
    (no model call). `model()` gives the decomposer and is called only when a chunk needs
    it, so a corpus that is already decomposed never loads one; None: every row must be.
    `limit` / `sample` (seeded by `seed`): only the first rows, or rows drawn at random."""
    names = (field,) if field else SEED_FIELDS
    for chunk in sliced(lambda: iter_records(path, chunk_size), limit, sample, seed):
        out: list[Decomposed] = []
        for loc, rec in chunk:
            if isinstance(rec, Failure):
                out.append(Decomposed(loc.file, loc.line, {}, None, failure=rec.reason))
                continue
            text = next((rec[k] for k in names if isinstance(rec.get(k), str) and rec[k].strip()), None)
            item = Decomposed(loc.file, loc.line, rec, text)
            if isinstance(rec.get("tasks"), list):  # already decomposed (e.g. by `ontask decompose`)
                try:
                    item.result = Decomposition.model_validate(
                        {k: rec.get(k) for k in ("is_complex", "languages", "tasks")}).model_dump(mode="json")
                except ValueError as err:
                    item.failure = f"{loc}: field 'tasks': not a valid decomposition: {str(err).splitlines()[0]}"
                out.append(item)
                continue
            try:
                given = state_from_record(rec, loc)
            except ValueError as err:  # InputError: a malformed decomposition in the row
                item.failure = str(err)
                given = None
            if given is not None:
                item.result = {"is_complex": bool(given.constraints), "languages": list(given.languages),
                               "tasks": [{"task_type": given.task_type, "base_query": given.base_query,
                                          "constraints": [c.to_json() for c in given.constraints]}]}
            elif item.failure is None and text is None:
                item.failure = f"no instruction: expected a non-empty string field {' or '.join(repr(n) for n in names)}"
            out.append(item)
        todo = [d for d in out if d.result is None and d.failure is None]
        if todo:
            if model is None:
                raise ValueError("these rows need decomposing: pass a decomposer model")
            results = decompose(model(), [d.instruction for d in todo], max_tokens=max_tokens)
            for d, r in zip(todo, results):
                if isinstance(r, GenError):
                    d.failure = r.reason
                else:
                    d.result = r
        if tick:
            tick(len(out))
        yield out


# -- evaluation against gold (ifeval_dev.jsonl: prompt, instruction_id_list, base_query) ------
def count_constraints(result: dict[str, Any]) -> int:
    return sum(len(t["constraints"]) for t in result["tasks"])


def evaluate(rows: list[Decomposed], embed: Callable[[list[str]], np.ndarray], *,
             gold_count: Callable[[dict[str, Any]], int | None], gold_base: Callable[[dict[str, Any]], str | None]) -> dict[str, Any]:
    """Constraint-count accuracy and base-query similarity over rows with gold labels.

    A failed row counts as wrong (accuracy is over every row with a gold count, parsed or not);
    similarity is the cosine of the embeddings of the predicted base query (first task)
    and the gold one.
    """
    n = len(rows)
    ok = [r for r in rows if r.result is not None]
    with_gold = sum(1 for r in rows if gold_count(r.record) is not None)
    exact = within1 = 0
    abs_err: list[int] = []
    pairs: list[tuple[str, str]] = []
    for r in ok:
        want = gold_count(r.record)
        if want is not None:
            got = count_constraints(r.result)
            exact += got == want
            within1 += abs(got - want) <= 1
            abs_err.append(abs(got - want))
        base = gold_base(r.record)
        if base:
            pairs.append((r.result["tasks"][0]["base_query"], base))
    sims: list[float] = []
    if pairs:
        a = embed([p for p, _ in pairs])
        b = embed([g for _, g in pairs])
        sims = [float(x) for x in np.einsum("ij,ij->i", a, b)]
    return {
        "rows": n, "schema_valid": len(ok), "failed": n - len(ok), "rows_with_gold_count": with_gold,
        "count_accuracy": exact / with_gold if with_gold else None,  # a failed row counts as wrong
        "count_within_1": within1 / with_gold if with_gold else None,
        "count_mae_parsed": float(np.mean(abs_err)) if abs_err else None,
        "base_query_similarity_mean": float(np.mean(sims)) if sims else None,
        "base_query_similarity_median": float(np.median(sims)) if sims else None,
        "is_complex_rate": (sum(1 for r in ok if r.result["is_complex"]) / len(ok)) if ok else None,
    }

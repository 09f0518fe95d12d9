"""What the report shows of scored rows: distributions, the cut-off, budgets, example rows.

Built to stay small and quick at any size: the numeric columns are read in one streaming
pass (a few floats per row), everything drawn is aggregated from them (histograms, a
seeded sample for the scatter, budget curves thinned to a few hundred points), and the
text of only the rows the page shows is read in a second pass. A report of 100k rows
carries a few hundred rows of text, not 100k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io import iter_records
from ..records import Failure, as_number
from ..selection.select import LOWER_IS_BETTER, SCORE_COLUMNS

METRICS = ("tss", "tss_pp", "ifd", "ppl")
LABELS = {"tss": "TSS", "tss_pp": "TSS++", "ifd": "IFD", "ppl": "perplexity", "ifd_ppl": "IFD x ppl", "lp": "log-prob"}
TEXT_FIELDS = ("instruction", "input", "response", "tss_top_alt")
TEXT_LIMIT = 4000  # characters of one text cell kept in the page


@dataclass
class ScoreColumns:
    """The numbers of every row, in file order (NaN where a row has no value)."""

    path: Path
    lines: np.ndarray
    values: dict[str, np.ndarray]
    tokens: np.ndarray | None
    unreadable: list[str] = field(default_factory=list)
    has_hop: bool = False
    # per-constraint specificity (`--alternatives variants`), flattened over rows, with the
    # code check of the same constraint: True passed, False violated, None no checker
    specificity: list[float] = field(default_factory=list)
    specificity_check: list[bool | None] = field(default_factory=list)
    rows_with_constraints: int = 0
    rows_flagged: int = 0

    @property
    def n(self) -> int:
        return len(self.lines)

    @property
    def metrics(self) -> list[str]:
        return [m for m in METRICS if m in self.values and np.isfinite(self.values[m]).any()]


def read_score_columns(path: Path) -> ScoreColumns:
    """One streaming pass over a scored file, keeping only numbers."""
    lines: list[int] = []
    cols: dict[str, list[float]] = {m: [] for m in METRICS}
    tokens: list[float] = []
    unreadable: list[str] = []
    has_hop = False
    spec: list[float] = []
    spec_check: list[bool | None] = []
    with_constraints = flagged = 0
    for chunk in iter_records(path):
        for loc, rec in chunk:
            if isinstance(rec, Failure):
                unreadable.append(f"{loc}: {rec.reason}")
                continue
            lines.append(loc.line or len(lines) + 1)
            for m in METRICS:
                cols[m].append(_number(rec.get(m)))
            tokens.append(_number(rec.get("tokens")))
            has_hop = has_hop or "hop" in rec
            cs = rec.get("constraint_specificity")
            if isinstance(cs, list) and cs:
                with_constraints += 1
                flagged += bool(rec.get("ignored_constraints"))
                checks = rec.get("constraint_checks") or [None] * len(cs)
                for x, c in zip(cs, checks):
                    if isinstance(x, (int, float)) and math.isfinite(x):
                        spec.append(float(x))
                        spec_check.append(c if isinstance(c, bool) else None)
    values = {m: np.array(v, dtype=np.float64) for m, v in cols.items()}
    tok = np.array(tokens, dtype=np.float64)
    return ScoreColumns(path=path, lines=np.array(lines, dtype=np.int64), values=values,
                        tokens=tok if np.isfinite(tok).any() else None, unreadable=unreadable, has_hop=has_hop,
                        specificity=spec, specificity_check=spec_check, rows_with_constraints=with_constraints,
                        rows_flagged=flagged)


def _number(v: Any) -> float:
    x = as_number(v)
    return math.nan if x is None else x


@dataclass
class Selection:
    """What `ontask select` did to these rows: kept or the reason each one was dropped."""

    by: str
    column: str
    descending: bool
    cutoff: float | None
    kept: np.ndarray  # bool per row
    reasons: list[str | None]
    counts: dict[str, Any]
    dropped_by_reason: dict[str, int]
    config: dict[str, Any]


def read_selection(cols: ScoreColumns, manifest: dict[str, Any], dropped_file: Path | None) -> Selection:
    """Join select.json and dropped.jsonl (by input line) onto the scored rows."""
    cfg = manifest.get("config", {})
    by = cfg.get("by", "tss")
    column = SCORE_COLUMNS.get(by, by)
    order = cfg.get("order", "auto")
    descending = (order == "desc") if order in ("asc", "desc") else column not in LOWER_IS_BETTER
    reason_by_line: dict[int, str] = {}
    if dropped_file is not None and dropped_file.is_file():
        for chunk in iter_records(dropped_file):
            for loc, rec in chunk:
                if isinstance(rec, dict) and isinstance(rec.get("line"), int):
                    reason_by_line[rec["line"]] = str(rec.get("reason") or "dropped")
    reasons = [reason_by_line.get(int(line)) for line in cols.lines]
    kept = np.array([r is None for r in reasons], dtype=bool)
    return Selection(by=by, column=column, descending=descending, cutoff=manifest.get("cutoff_score"),
                     kept=kept, reasons=reasons, counts=manifest.get("counts", {}),
                     dropped_by_reason=manifest.get("dropped_by_reason", {}), config=cfg)


def primary_metric(cols: ScoreColumns, selection: Selection | None) -> tuple[str, bool] | None:
    """The score that orders the example rows: the selection's, else the most specific one present."""
    if selection is not None and selection.column in cols.values:
        return selection.column, selection.descending
    for m in ("tss_pp", "tss", "ifd", "ppl"):
        if m in cols.metrics:
            return m, m not in LOWER_IS_BETTER
    return None


def histogram(values: np.ndarray, kept: np.ndarray | None, bins: int = 50) -> dict[str, Any] | None:
    """Counts of the finite values within 3 IQR of the quartiles (far outliers are counted, not drawn).

    One perplexity of 10^6 would otherwise squeeze every other row into one bin.
    """
    finite = np.isfinite(values)
    v = values[finite]
    if not len(v):
        return None
    q1, q3 = np.percentile(v, [25, 75])
    lo, hi = max(float(v.min()), q1 - 3 * (q3 - q1)), min(float(v.max()), q3 + 3 * (q3 - q1))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, min(bins, max(5, int(math.sqrt(len(v))) + 1)) + 1)
    inside = (v >= lo) & (v <= hi)
    out: dict[str, Any] = {"edges": edges.tolist(), "rows": int(len(v)), "missing": int((~finite).sum()),
                           "outside": int((~inside).sum()), "mean": float(v.mean()), "median": float(np.median(v))}
    if kept is None:
        out["all"] = np.histogram(v[inside], edges)[0].tolist()
    else:
        k = kept[finite][inside]
        out["kept"] = np.histogram(v[inside][k], edges)[0].tolist()
        out["dropped"] = np.histogram(v[inside][~k], edges)[0].tolist()
    return out


def sample_indices(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """At most `limit` row indices, sorted; all of them when there are few enough."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def budget_curves(cols: ScoreColumns, points: int = 300) -> dict[str, dict[str, list[float]]]:
    """Rows kept against tokens spent, ranking by each score as `ontask select --max-tokens` does."""
    if cols.tokens is None:
        return {}
    out = {}
    for m in cols.metrics:
        v = cols.values[m]
        ok = np.isfinite(v) & np.isfinite(cols.tokens)
        if not ok.any():
            continue
        idx = np.flatnonzero(ok)
        order = idx[np.argsort(v[idx] if m in LOWER_IS_BETTER else -v[idx], kind="stable")]
        spent = np.cumsum(cols.tokens[order])
        rows = np.arange(1, len(order) + 1)
        take = np.unique(np.linspace(0, len(order) - 1, min(points, len(order))).round().astype(int))
        out[m] = {"tokens": [0.0] + spent[take].tolist(), "rows": [0] + rows[take].tolist()}
    return out


def example_rows(cols: ScoreColumns, metric: str, descending: bool, selection: Selection | None,
                 per_group: int = 50) -> list[tuple[int, str, int]]:
    """(row index, group, rank) for the top, bottom and borderline rows by `metric`.

    Borderline rows sit either side of the selection's cut-off (or of the median when
    nothing was selected). Rows without the score are not ranked. With few rows, all are shown.
    """
    v = cols.values[metric]
    idx = np.flatnonzero(np.isfinite(v))
    order = idx[np.argsort(-v[idx] if descending else v[idx], kind="stable")]
    n = len(order)
    if n <= 3 * per_group:
        return [(int(i), "all", r + 1) for r, i in enumerate(order)]
    if selection is not None and selection.cutoff is not None:  # rows at least as good as the cut-off
        ranked = v[order]
        boundary = int(np.sum(ranked >= selection.cutoff) if descending else np.sum(ranked <= selection.cutoff))
    else:
        boundary = n // 2
    half = per_group // 2
    chosen: dict[int, tuple[str, int]] = {}
    for r in range(per_group):
        chosen.setdefault(r, ("top", r))
    for r in range(n - per_group, n):
        chosen.setdefault(r, ("bottom", r))
    for r in range(max(0, boundary - half), min(n, boundary + half)):
        chosen.setdefault(r, ("borderline", r))
    return [(int(order[r]), group, r + 1) for r, (group, _) in sorted(chosen.items())]


def read_rows(path: Path, wanted: set[int]) -> dict[int, dict[str, Any]]:
    """Second pass: the full records of the rows at these indices (readable rows only)."""
    out: dict[int, dict[str, Any]] = {}
    i = 0
    for chunk in iter_records(path):
        for _, rec in chunk:
            if isinstance(rec, Failure):
                continue
            if i in wanted:
                out[i] = rec
            i += 1
        if len(out) == len(wanted):
            break
    return out


def clip(text: Any, limit: int = TEXT_LIMIT) -> str | None:
    """Text for a table cell: None stays None (shown as missing), long text is cut and marked."""
    if text is None:
        return None
    s = text if isinstance(text, str) else str(text)
    return s if len(s) <= limit else s[:limit] + f" [... {len(s) - limit:,} more characters]"

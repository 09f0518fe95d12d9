"""`ontask select`: rank scored rows and keep the best under a budget (tss.md, Selection).

Two streaming reads of the scored file: the first collects only what ranking needs
(score, tokens, IFD, perplexity per row) into flat arrays; the second writes the kept rows
in their original order. Every row that is not kept gets a reason in `dropped.jsonl`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..io import AtomicWriter, JsonlAppender, iter_records, write_json_atomic
from ..records import Failure
from ..runs import RunPaths, versions

SCORE_COLUMNS = {"tss": "tss", "tss++": "tss_pp", "tss_pp": "tss_pp", "ifd": "ifd", "ifd_ppl": "ifd_ppl", "ppl": "ppl", "lp": "lp"}
LOWER_IS_BETTER = {"ifd", "ifd_ppl", "ppl"}


class SelectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str = "tss"
    retain: float | None = Field(None, gt=0, le=1, description="share of input rows to keep")
    max_tokens: int | None = Field(None, gt=0, description="token budget (scorer tokens of prompt + output)")
    ifd_max: float | None = Field(None, description="drop rows with IFD above this (1 = the instruction hurts)")
    ppl_min_pct: float | None = Field(None, ge=0, le=100)
    ppl_max_pct: float | None = Field(None, ge=0, le=100)
    diversity: float | None = Field(None, gt=0, le=1, description="skip a row whose instruction is this cosine-close to a kept one")
    embedder: str = "embedded"
    order: Literal["auto", "desc", "asc"] = "auto"
    stratify: str | None = Field(None, description="column whose groups share the budget in proportion to their size")
    stratify_min: int = Field(0, ge=0, description="with stratify: keep at least this many rows of each group")

    @model_validator(mode="after")
    def _one_budget(self) -> "SelectConfig":
        if (self.retain is None) == (self.max_tokens is None):
            raise ValueError("give exactly one budget: --retain FRACTION or --max-tokens N")
        if self.by not in SCORE_COLUMNS:
            raise ValueError(f"--by must be one of {', '.join(SCORE_COLUMNS)}")
        if self.stratify_min and not self.stratify:
            raise ValueError("--stratify-min needs --stratify COLUMN")
        return self

    @property
    def column(self) -> str:
        return SCORE_COLUMNS[self.by]

    @property
    def descending(self) -> bool:
        if self.order != "auto":
            return self.order == "desc"
        return self.column not in LOWER_IS_BETTER


def _number(record: dict[str, Any], col: str) -> float | None:
    v = record.get(col)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _or_nan(x: float | None) -> float:
    return math.nan if x is None else x


def run_select(input_path: str | os.PathLike, output: str | os.PathLike, cfg: SelectConfig, *, embedder: Any = None) -> dict[str, Any]:
    path = Path(input_path)
    run = RunPaths.at(output)
    t0 = time.perf_counter()
    col = cfg.column
    score, tokens, ifd, ppl, instr, group = [], [], [], [], [], []
    reasons: dict[int, tuple[str, str]] = {}  # row (0-based) -> (kind, detail)
    locs: list[Any] = []
    n = 0
    for chunk in iter_records(path):
        for loc, rec in chunk:
            i = n
            n += 1
            locs.append(loc.line)
            if isinstance(rec, Failure):
                reasons[i] = ("unreadable", rec.reason)
                score.append(math.nan); tokens.append(0); ifd.append(math.nan); ppl.append(math.nan); instr.append("")
                group.append("(unreadable)")
                continue
            s = _number(rec, col)
            if s is None:
                reasons[i] = ("no score", f"no numeric '{col}' (run `ontask score` with that metric first)")
            score.append(math.nan if s is None else s)
            t = _number(rec, "tokens")
            if cfg.max_tokens is not None and t is None and i not in reasons:
                reasons[i] = ("no tokens", "no 'tokens' column, needed by --max-tokens")
            tokens.append(int(t or 0))
            ifd.append(_or_nan(_number(rec, "ifd")))
            ppl.append(_or_nan(_number(rec, "ppl")))
            instr.append(str(rec.get("instruction", "")) if cfg.diversity else "")
            group.append(_group_of(rec, cfg.stratify) if cfg.stratify else "")
    score_a, ifd_a, ppl_a = np.array(score), np.array(ifd), np.array(ppl)
    if n == 0:
        raise ValueError(f"{path}: no rows to select from (the file is empty)")
    if all(kind in ("no score", "unreadable") for kind, _ in reasons.values()) and len(reasons) == n:
        raise ValueError(f"{path}: none of its {n} rows has a numeric '{col}' score; score them first "
                         f"(ontask score {path} -o scored.jsonl --metrics {cfg.by}) or choose another --by")

    if cfg.ifd_max is not None:
        for i in np.flatnonzero(~np.isnan(ifd_a) & (ifd_a > cfg.ifd_max)):
            reasons.setdefault(int(i), ("ifd above max", f"ifd {ifd_a[i]:.4f} > {cfg.ifd_max}"))
        for i in np.flatnonzero(np.isnan(ifd_a)):
            reasons.setdefault(int(i), ("no ifd", "no 'ifd' column, needed by --ifd-max"))
    bounds = {}
    if cfg.ppl_min_pct is not None or cfg.ppl_max_pct is not None:
        valid = ppl_a[~np.isnan(ppl_a)]
        lo = float(np.percentile(valid, cfg.ppl_min_pct)) if cfg.ppl_min_pct is not None and len(valid) else -math.inf
        hi = float(np.percentile(valid, cfg.ppl_max_pct)) if cfg.ppl_max_pct is not None and len(valid) else math.inf
        bounds = {"ppl_low": lo if math.isfinite(lo) else None, "ppl_high": hi if math.isfinite(hi) else None}
        for i in range(n):
            if math.isnan(ppl_a[i]):
                reasons.setdefault(i, ("no ppl", "no 'ppl' column, needed by perplexity bounds"))
            elif ppl_a[i] < lo:
                reasons.setdefault(i, ("ppl below bound", f"ppl {ppl_a[i]:.3f} < {cfg.ppl_min_pct}th percentile {lo:.3f}"))
            elif ppl_a[i] > hi:
                reasons.setdefault(i, ("ppl above bound", f"ppl {ppl_a[i]:.3f} > {cfg.ppl_max_pct}th percentile {hi:.3f}"))

    candidates = [i for i in range(n) if i not in reasons]
    sign = -1.0 if cfg.descending else 1.0
    candidates.sort(key=lambda i: (sign * score_a[i], i))  # ties: earlier row first
    if cfg.diversity and embedder is None:
        from ..embed import load_embedder

        embedder = load_embedder(cfg.embedder)
    kept: list[int] = []
    kept_vecs: list[np.ndarray] = []
    budget_reason = ("over budget", f"--retain {cfg.retain}" if cfg.retain is not None else f"--max-tokens {cfg.max_tokens}")
    budgets = _budgets(cfg, group, n)
    members: dict[str, list[int]] = {name: [] for name in budgets}
    for i in candidates:  # rank order within each group
        members[group[i]].append(i)
    for name, budget in budgets.items():
        _fill(members[name], budget, tokens, instr, locs, cfg, embedder, kept, kept_vecs, reasons)
    kept.sort(key=lambda i: (sign * score_a[i], i))  # one ranking across groups
    kept_tokens = sum(tokens[i] for i in kept)
    kept_set = set(kept)
    for i in candidates:
        if i not in reasons and i not in kept_set:
            reasons[i] = budget_reason if not cfg.stratify else (
                "over budget", f"{budget_reason[1]}, group {cfg.stratify}={group[i]!r}")
    rank = {i: r + 1 for r, i in enumerate(kept)}

    run.dropped.unlink(missing_ok=True)
    with JsonlAppender(run.dropped) as dropped, AtomicWriter(run.output) as writer:
        i = 0
        for chunk in iter_records(path):
            out = []
            for loc, rec in chunk:
                if i in rank:
                    out.append({**rec, "rank": rank[i]})
                else:
                    dropped.write({"line": loc.line, "score": None if math.isnan(score_a[i]) else score_a[i], "reason": reasons[i][0], "detail": reasons[i][1]})
                i += 1
            writer.write(out)

    by_reason: dict[str, int] = {}
    for kind, _ in reasons.values():
        by_reason[kind] = by_reason.get(kind, 0) + 1
    cutoff = score_a[kept[-1]] if kept else None
    manifest = {
        "command": "select",
        "input": str(path),
        "output": str(run.output),
        "dropped": str(run.dropped),
        "config": cfg.model_dump(),
        "versions": versions(),
        "counts": {"rows": n, "kept": len(kept), "dropped": n - len(kept), "kept_tokens": kept_tokens},
        "dropped_by_reason": by_reason,
        "cutoff_score": None if cutoff is None else float(cutoff),
        "ppl_bounds": bounds or None,
        "groups": _group_counts(group, kept, budgets) if cfg.stratify else None,
        "timings": {"total_s": round(time.perf_counter() - t0, 3)},
    }
    write_json_atomic(run.select_manifest, manifest)
    return manifest


def _group_of(record: dict[str, Any], column: str) -> str:
    value = record.get(column)
    return "(missing)" if value is None else (json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value))


@dataclass(frozen=True)
class _Budget:
    """One group's budget: at most `max_rows` rows or `max_tokens` tokens, and with a token
    budget, at least `min_rows` rows whatever they cost (`--stratify-min`)."""

    max_rows: int | None = None
    max_tokens: float | None = None
    min_rows: int = 0


def _budgets(cfg: SelectConfig, group: list[str], n: int) -> dict[str, _Budget]:
    """Each group's budget. Unstratified: one group with the whole budget. Stratified: the
    budget split in proportion to the group's share of the input rows (rows rounded half
    up), each group given at least `stratify_min` rows it has."""
    sizes: dict[str, int] = {}
    for g in group:
        sizes[g] = sizes.get(g, 0) + 1
    out: dict[str, _Budget] = {}
    for name, size in sorted(sizes.items()):
        least = min(cfg.stratify_min, size)
        if cfg.retain is not None:
            rows = max(1, math.floor(cfg.retain * (size if cfg.stratify else n) + 0.5))  # half up
            out[name] = _Budget(max_rows=max(rows, least))
        else:
            assert cfg.max_tokens is not None
            out[name] = _Budget(max_tokens=cfg.max_tokens * (size / n if cfg.stratify else 1.0), min_rows=least)
    return out


def _fill(members: list[int], budget: _Budget, tokens: list[int], instr: list[str], locs: list[Any],
          cfg: SelectConfig, embedder: Any, kept: list[int], kept_vecs: list[np.ndarray],
          reasons: dict[int, tuple[str, str]]) -> None:
    """Keep `members` (in rank order) until the budget is spent; rank order is strict: nothing
    below a row that did not fit is kept. Near duplicates of any kept row (all groups) are
    skipped with a reason."""
    count, spent_tokens = 0, 0
    pos, spent = 0, False
    while pos < len(members) and not spent:
        block = members[pos : pos + 64]
        vecs = embedder.embed([instr[i] for i in block]) if cfg.diversity else None
        for j, i in enumerate(block):
            spent = (budget.max_rows is not None and count >= budget.max_rows) or (
                budget.max_tokens is not None and count >= budget.min_rows
                and spent_tokens + tokens[i] > budget.max_tokens)
            if spent:
                break
            if vecs is not None and kept_vecs:
                sims = np.stack(kept_vecs) @ vecs[j]
                best = int(np.argmax(sims))
                if sims[best] > cfg.diversity:
                    reasons[i] = ("near duplicate", f"cosine {sims[best]:.3f} to the kept row at line {locs[kept[best]]}")
                    continue
            kept.append(i)
            count += 1
            spent_tokens += tokens[i]
            if vecs is not None:
                kept_vecs.append(vecs[j])
        pos += 64


def _group_counts(group: list[str], kept: list[int], budgets: dict[str, Any]) -> dict[str, dict[str, int]]:
    out = {name: {"rows": 0, "kept": 0} for name in budgets}
    for g in group:
        out[g]["rows"] += 1
    for i in kept:
        out[group[i]]["kept"] += 1
    return out

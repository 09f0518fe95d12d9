"""`ontask select`: rank scored rows and keep the best under a budget (tss.md, Selection).

Two streaming reads of the scored file: the first collects only what ranking needs
(score, tokens, IFD, perplexity, output length per row) into flat arrays; the second writes
the kept rows in their original order. Every row that is not kept gets a reason in
`dropped.jsonl`.

`--by random` (a seeded order) and `--by length` (longest output first) need no score
column: they are the baselines a score has to beat, and select.json says what each would
have kept at the same budget (`baselines`), from the same arrays, without another read.
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
from ..records import Failure, as_number
from ..runs import RunPaths, versions

SCORE_COLUMNS = {"tss": "tss", "tss++": "tss_pp", "tss_pp": "tss_pp", "ifd": "ifd", "ifd_ppl": "ifd_ppl", "ppl": "ppl", "lp": "lp"}
LOWER_IS_BETTER = {"ifd", "ifd_ppl", "ppl"}
# Orders that need no score: what a score-based selection is compared against.
BASELINES = ("random", "length")
OUTPUT_FIELDS = ("output", "response")  # Alpaca / Self-Instruct rows, then Dolly / augmented rows


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
    seed: int = Field(0, description="seed of the random order (--by random, and the random baseline)")

    @model_validator(mode="after")
    def _one_budget(self) -> "SelectConfig":
        if (self.retain is None) == (self.max_tokens is None):
            raise ValueError("give exactly one budget: --retain FRACTION or --max-tokens N")
        if self.by not in SCORE_COLUMNS and self.by not in BASELINES:
            raise ValueError(f"--by must be one of {', '.join([*SCORE_COLUMNS, *BASELINES])}")
        if self.stratify_min and not self.stratify:
            raise ValueError("--stratify-min needs --stratify COLUMN")
        return self

    @property
    def column(self) -> str:
        """The score column ranked on; for a baseline, its own name (it has no column)."""
        return SCORE_COLUMNS.get(self.by, self.by)

    @property
    def descending(self) -> bool:
        if self.order != "auto":
            return self.order == "desc"
        return self.column not in LOWER_IS_BETTER


def _number(record: dict[str, Any], col: str) -> float | None:
    return as_number(record.get(col))


def _or_nan(x: float | None) -> float:
    return math.nan if x is None else x


def _output_text(record: dict[str, Any]) -> str | None:
    """The row's output text as the known layouts store it (`output`, `response`, or the
    assistant's reply in `messages`): scored files keep the input's columns verbatim."""
    for name in OUTPUT_FIELDS:
        if isinstance(record.get(name), str):
            return record[name]
    messages = record.get("messages")
    if isinstance(messages, list):
        replies = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
        if replies and isinstance(replies[-1], str):
            return replies[-1]
    return None


def _output_length(record: dict[str, Any]) -> float | None:
    """How long the output is, for `--by length`: the scorer's `output_tokens` when the row
    was scored (the unit the token budget counts in), else its characters, so that raw,
    unscored rows can be ranked too. None when the row has neither."""
    tokens = _number(record, "output_tokens")
    if tokens is not None:
        return tokens
    text = _output_text(record)
    return None if text is None else float(len(text))


def _criterion(record: dict[str, Any], cfg: SelectConfig) -> float | None:
    """The row's value for `cfg.by`, None when it has none. Random keys are drawn once the
    row count is known (after the read), so every row gets a placeholder here."""
    if cfg.by == "random":
        return 0.0
    if cfg.by == "length":
        return _output_length(record)
    return _number(record, cfg.column)


def _missing(cfg: SelectConfig) -> tuple[str, str]:
    """The drop reason of a row with no value for `cfg.by`."""
    if cfg.by == "length":
        return ("no length", f"no 'output_tokens' column and no output text ({', '.join(OUTPUT_FIELDS)} or messages)")
    return ("no score", f"no numeric '{cfg.column}' (run `ontask score` with that metric first)")


def _random_keys(seed: int, n: int) -> np.ndarray:
    """One uniform key per row (0-based), the same for the same seed and row count."""
    return np.random.default_rng(seed).random(n)


def run_select(input_path: str | os.PathLike, output: str | os.PathLike, cfg: SelectConfig, *, embedder: Any = None) -> dict[str, Any]:
    path = Path(input_path)
    run = RunPaths.at(output)
    t0 = time.perf_counter()
    score, tokens, ifd, ppl, instr, group, length = [], [], [], [], [], [], []
    reasons: dict[int, tuple[str, str]] = {}  # row (0-based) -> (kind, detail)
    locs: list[Any] = []
    n = with_tokens = 0
    for chunk in iter_records(path):
        for loc, rec in chunk:
            i = n
            n += 1
            locs.append(loc.line)
            if isinstance(rec, Failure):
                reasons[i] = ("unreadable", rec.reason)
                score.append(math.nan); tokens.append(0); ifd.append(math.nan); ppl.append(math.nan); instr.append("")
                group.append("(unreadable)" if cfg.stratify else ""); length.append(math.nan)
                continue
            s = _criterion(rec, cfg)
            if s is None:
                reasons[i] = _missing(cfg)
            score.append(math.nan if s is None else s)
            length.append(_or_nan(_output_length(rec)))
            t = _number(rec, "tokens")
            with_tokens += t is not None
            if cfg.max_tokens is not None and t is None and i not in reasons:
                reasons[i] = ("no tokens", "no 'tokens' column, needed by --max-tokens")
            tokens.append(int(t or 0))
            ifd.append(_or_nan(_number(rec, "ifd")))
            ppl.append(_or_nan(_number(rec, "ppl")))
            instr.append(str(rec.get("instruction", "")) if cfg.diversity else "")
            group.append(_group_of(rec, cfg.stratify) if cfg.stratify else "")
    score_a, ifd_a, ppl_a = np.array(score, dtype=float), np.array(ifd, dtype=float), np.array(ppl, dtype=float)
    length_a, random_a = np.array(length, dtype=float), _random_keys(cfg.seed, n)
    if cfg.by == "random":
        score_a = np.where(np.isnan(score_a), math.nan, random_a)  # unreadable rows stay unranked
    if n == 0:
        raise ValueError(f"{path}: no rows to select from (the file is empty)")
    _check_rankable(path, n, reasons, with_tokens, cfg)

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
    eligible = np.array(candidates, dtype=np.int64)  # the baselines' pool: filters applied, diversity not
    budget_reason = ("over budget", f"--retain {cfg.retain}" if cfg.retain is not None else f"--max-tokens {cfg.max_tokens}")
    budgets = _budgets(cfg, group, n)
    members: dict[str, list[int]] = {name: [] for name in budgets}
    for i in candidates:  # rank order within each group
        members[group[i]].append(i)
    for name, budget in budgets.items():
        _fill(members[name], budget, tokens, instr, locs, cfg, embedder, kept, kept_vecs, reasons)
    if cfg.stratify:  # what a group could not spend goes to the best rows left in any group
        taken = set(kept) | set(reasons)
        _fill([i for i in candidates if i not in taken], _leftover(_total(cfg, n), kept, tokens), tokens, instr, locs,
              cfg, embedder, kept, kept_vecs, reasons)
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
        "baselines": _baselines(cfg, eligible, {"random": random_a, "length": length_a}, score_a,
                                np.array(tokens, dtype=np.int64), group, budgets, kept, _total(cfg, n)),
        "timings": {"total_s": round(time.perf_counter() - t0, 3)},
    }
    write_json_atomic(run.select_manifest, manifest)
    return manifest


def _check_rankable(path: Path, n: int, reasons: dict[int, tuple[str, str]], with_tokens: int,
                    cfg: SelectConfig) -> None:
    """Refuse a file nothing could be kept from for a reason the user fixes once (no score
    column at all, no token counts for a token budget), rather than drop every row."""
    if len(reasons) == n and all(kind in ("no score", "no length", "unreadable") for kind, _ in reasons.values()):
        if cfg.by == "length":
            raise ValueError(f"{path}: none of its {n} rows has an output length ('output_tokens', or an "
                             f"output text in {', '.join(OUTPUT_FIELDS)} or messages); name the columns when scoring")
        raise ValueError(f"{path}: none of its {n} rows has a numeric '{cfg.column}' score; score them first "
                         f"(ontask score {path} -o scored.jsonl --metrics {cfg.by}) or choose another --by")
    if cfg.max_tokens is not None and with_tokens == 0:
        raise ValueError(f"{path}: --max-tokens counts each row's 'tokens' column (written by `ontask score`), and "
                         f"none of its {n} rows has one; score them first or give a share of rows with --retain")


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


def _total(cfg: SelectConfig, n: int) -> _Budget:
    """The whole budget: rows (`--retain`, rounded half up, at least one) or tokens."""
    if cfg.retain is not None:
        return _Budget(max_rows=max(1, math.floor(cfg.retain * n + 0.5)))
    return _Budget(max_tokens=cfg.max_tokens)


def _budgets(cfg: SelectConfig, group: list[str], n: int) -> dict[str, _Budget]:
    """Each group's budget. Unstratified: one group with the whole budget. Stratified: the
    budget split in proportion to the group's share of the input rows, rows apportioned by
    largest remainder (the shares add up to the whole budget: a group whose share is under
    half a row may get none, as plain selection would give it), each group given at least
    `stratify_min` rows it has (which may spend more than the budget: the user asked)."""
    sizes: dict[str, int] = {}
    for g in group:
        sizes[g] = sizes.get(g, 0) + 1
    total = _total(cfg, n)
    if not cfg.stratify:
        return {name: total for name in sizes}
    rows = _apportion(total.max_rows, sizes) if total.max_rows is not None else {}
    out: dict[str, _Budget] = {}
    for name, size in sorted(sizes.items()):
        least = min(cfg.stratify_min, size)
        if cfg.retain is not None:
            out[name] = _Budget(max_rows=max(rows[name], least))
        else:
            assert cfg.max_tokens is not None
            out[name] = _Budget(max_tokens=cfg.max_tokens * (size / n if cfg.stratify else 1.0), min_rows=least)
    return out


def _apportion(total: int, sizes: dict[str, int]) -> dict[str, int]:
    """`total` rows split in proportion to `sizes`: each group its whole quota, then one more
    to the largest remainders (ties: the larger group, then the name) until `total` is met."""
    n = sum(sizes.values())
    quota = {g: total * s / n for g, s in sizes.items()}
    rows = {g: math.floor(q) for g, q in quota.items()}
    order = sorted(sizes, key=lambda g: (-(quota[g] - rows[g]), -sizes[g], g))
    for g in order[: total - sum(rows.values())]:
        rows[g] += 1
    return rows


def _leftover(total: _Budget, kept: list[int], tokens: Any) -> _Budget:
    """What the groups did not spend of the whole budget (a group with fewer eligible rows than
    its share, or whose next row costs more than its token share), for the best rows left."""
    if total.max_rows is not None:
        return _Budget(max_rows=max(0, total.max_rows - len(kept)))
    assert total.max_tokens is not None
    return _Budget(max_tokens=max(0.0, total.max_tokens - sum(int(tokens[i]) for i in kept)))


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
            spent = _spent(budget, count, spent_tokens, tokens[i])
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


def _spent(budget: _Budget, count: int, spent_tokens: int, cost: int) -> bool:
    """Whether a group that kept `count` rows of `spent_tokens` tokens has room for no row of
    `cost` tokens: the one budget rule shared by the selection and its baselines."""
    return (budget.max_rows is not None and count >= budget.max_rows) or (
        budget.max_tokens is not None and count >= budget.min_rows and spent_tokens + cost > budget.max_tokens)


def _within_budget(members: np.ndarray, budget: _Budget, tokens: np.ndarray) -> list[int]:
    """The head of `members` (in rank order) that fits the budget, strict as in `_fill`."""
    kept: list[int] = []
    spent_tokens = 0
    for i in members.tolist():
        if _spent(budget, len(kept), spent_tokens, int(tokens[i])):
            break
        kept.append(i)
        spent_tokens += int(tokens[i])
    return kept


def _baseline_keep(key: np.ndarray, eligible: np.ndarray, group: list[str], budgets: dict[str, _Budget],
                   tokens: np.ndarray, total: _Budget) -> np.ndarray:
    """What ranking `eligible` by `key` (highest first; ties and missing keys: earlier row
    first, missing last) would keep under the same per-group budgets, as row indices."""
    k = key[eligible]
    order = eligible[np.lexsort((eligible, -np.where(np.isnan(k), -np.inf, k)))]
    if len(budgets) == 1:
        (only,) = budgets.values()
        return np.array(_within_budget(order, only, tokens), dtype=np.int64)
    names = np.array([group[i] for i in order.tolist()], dtype=object)
    kept = [i for name, budget in budgets.items() for i in _within_budget(order[names == name], budget, tokens)]
    rest = order[~np.isin(order, kept)]
    kept += _within_budget(rest, _leftover(total, kept, tokens), tokens)  # as the selection does
    return np.array(kept, dtype=np.int64)


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _baselines(cfg: SelectConfig, eligible: np.ndarray, keys: dict[str, np.ndarray], score: np.ndarray,
               tokens: np.ndarray, group: list[str], budgets: dict[str, _Budget], kept: list[int],
               total: _Budget) -> dict[str, Any]:
    """What each baseline order (not the one selected by) keeps at the same budget, from the
    same pool (rows past the filters; the diversity guard is not applied, as it would need
    every baseline row embedded), beside the selection: a score worth its cost keeps rows
    whose mean score is well above random's, and is not just the longest outputs."""
    chosen = np.array(kept, dtype=np.int64)
    out: dict[str, Any] = {}
    for name in BASELINES:
        if name == cfg.by:
            continue
        rows = _baseline_keep(keys[name], eligible, group, budgets, tokens, total)
        common = int(np.isin(rows, chosen).sum())
        out[name] = {
            "kept": int(len(rows)),
            "kept_tokens": int(tokens[rows].sum()),
            "mean_score": _mean(score[rows]),
            "selection_mean_score": _mean(score[chosen]),
            "common": common,
            "overlap": common / len(rows) if len(rows) else None,
        }
    return out


def _group_counts(group: list[str], kept: list[int], budgets: dict[str, Any]) -> dict[str, dict[str, int]]:
    out = {name: {"rows": 0, "kept": 0} for name in budgets}
    for g in group:
        out[g]["rows"] += 1
    for i in kept:
        out[group[i]]["kept"] += 1
    return out

"""`build_report`: from run folders to one self-contained HTML file.

Reading and aggregation (`sources`, `augment_view`, `scores_view`) are separate from the
figures (`figures`) and from the page (`render`), so each can be tested on its own and a
new section touches one place. The page carries no link to anything outside itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..records import InputError
from .._version import __version__
from ..io import iter_records, write_text_atomic
from . import augment_view as av
from . import figures as fg
from . import scores_view as sv
from .config import ReportOptions
from .render import render_page
from .sources import ReportSources, find_sources


def build_report(source: str | Path, output: str | Path, options: ReportOptions | None = None) -> dict[str, Any]:
    """Write the report for `source` to `output`; return a summary (path, bytes, sections, seconds)."""
    t0 = time.perf_counter()
    opts = options or ReportOptions()
    src = find_sources(source)
    page = _Page(title=opts.title or _default_title(src), source=str(src.source), notes=list(src.notes))
    if src.augment_dir is not None:
        _augment_section(page, src, opts)
    if src.scored_file is not None:
        _scores_section(page, src, opts)
    _failures(page, src)
    _settings(page, src)
    html = render_page(page.context(__version__))
    out = Path(output)
    write_text_atomic(out, html)
    return {"output": str(out), "bytes": len(html.encode("utf-8")), "sections": page.sections(),
            "figures": sorted(page.figures), "seconds": round(time.perf_counter() - t0, 3)}


def _default_title(src: ReportSources) -> str:
    parts = []
    if src.augment_dir is not None:
        parts.append("augmentation")
    if src.scored_file is not None:
        parts.append("scores")
    if src.select_manifest is not None:
        parts.append("selection")
    return f"ontask report: {', '.join(parts)} ({src.source.resolve().name})"


class _Page:
    """What the template needs, filled in section by section."""

    def __init__(self, title: str, source: str, notes: list[str]) -> None:
        self.title, self.source, self.notes = title, source, notes
        self.cards: list[dict[str, str]] = []
        self.figures: dict[str, Any] = {}
        self.tables: dict[str, Any] = {}
        self.lineage: dict[str, Any] | None = None
        self.augment: dict[str, Any] | None = None
        self.scores: dict[str, Any] | None = None
        self.failures: list[dict[str, Any]] = []
        self.failure_rows: list[list[Any]] = []
        self.runs: list[dict[str, Any]] = []

    def card(self, label: str, value: Any) -> None:
        self.cards.append({"label": label, "value": f"{value:,}" if isinstance(value, int) else str(value)})

    def add_figure(self, name: str, fig: Any) -> None:
        if fig is not None:
            self.figures[name] = fg.to_plain(fig)

    def sections(self) -> list[str]:
        out = ["overview"]
        if self.augment:
            out += ["augmentation", "lineage"]
        if self.scores:
            out += ["scores", "rows"]
        if self.failures:
            out.append("failures")
        return out + ["settings"]

    def context(self, version: str) -> dict[str, Any]:
        if self.failure_rows:
            self.tables["failures"] = {
                "columns": [{"key": "run", "label": "run", "kind": "text"}, {"key": "stage", "label": "stage", "kind": "text"},
                            {"key": "where", "label": "where", "kind": "text"}, {"key": "model", "label": "model", "kind": "text"},
                            {"key": "reason", "label": "reason", "kind": "long"}],
                "rows": self.failure_rows}
        return {"title": self.title, "source": self.source, "version": version,
                "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "notes": self.notes, "cards": self.cards,
                "augment": self.augment, "scores": self.scores, "failures": self.failures, "runs": self.runs,
                "figures": self.figures,
                "data": {"template": fg.template(), "figures": self.figures, "tables": self.tables, "lineage": self.lineage}}


# -- augmentation -----------------------------------------------------------------------------
def _augment_section(page: _Page, src: ReportSources, opts: ReportOptions) -> None:
    manifest = src.augment_manifest or {}
    folder = src.augment_dir
    assert folder is not None
    def states():
        return av.iter_instructions(folder / "instructions.jsonl")

    funnel = av.funnel(manifest)
    if funnel:
        page.add_figure("funnel", fg.funnel_figure(funnel))
        page.add_figure("drops", fg.drops_figure(funnel))
        counts = {s["key"]: s["count"] for s in funnel["stages"]}
        page.card("seeds", funnel.get("seeds") or len(manifest.get("seeds") or []))
        page.card("states explored", counts.get("states_explored", "-"))
        page.card("valid instructions", counts.get("valid", "-"))
        page.card("augmented rows kept", counts.get("kept", "-"))
    div = av.diversity(manifest)
    if div:
        page.add_figure("diversity", fg.diversity_figure(div))
    ot = av.on_task(manifest)
    if ot:
        page.add_figure("on_task", fg.on_task_figure(ot))
    cons = av.constraint_counts(states())
    page.add_figure("categories", fg.categories_figure(cons))
    page.add_figure("top_constraints", fg.top_constraints_figure(cons))
    page.lineage = av.lineage(manifest, states, max_nodes=opts.tree_nodes)
    summary = []
    if div and div.get("all") is not None:
        summary.append(f"Diversity of all {div['of']} instructions: {div['all']:.3f}.")
    if ot:
        overall = next((r for r in ot if r["hop"] == "all"), None)
        if overall and overall["ratio"] is not None:
            summary.append(f"On task: {overall['ratio']:.0%} of {overall['judged']} judged.")
    page.augment = {"dir": str(folder), "summary": " ".join(summary), "lineage_omitted": page.lineage["omitted"],
                    "rows_table": src.scored_file is None}
    if src.scored_file is None:  # no scores: show the augmented rows themselves
        _augment_rows_table(page, folder / "data.jsonl", opts)


def _augment_rows_table(page: _Page, data: Path, opts: ReportOptions) -> None:
    if not data.is_file():
        return
    rows = []
    limit = opts.rows_per_group * 6
    total = 0
    for chunk in iter_records(data):
        for loc, rec in chunk:
            if not isinstance(rec, dict):
                continue
            total += 1
            if len(rows) < limit:
                rows.append([loc.line, rec.get("hop"), rec.get("judge_mean"), rec.get("model"),
                             sv.clip(rec.get("instruction")), sv.clip(rec.get("input")), sv.clip(rec.get("response"))])
    page.tables["augment_rows"] = {
        "columns": [{"key": "line", "label": "line", "kind": "num"}, {"key": "hop", "label": "hop", "kind": "num"},
                    {"key": "judge_mean", "label": "judge mean", "kind": "num"}, {"key": "model", "label": "model", "kind": "text"},
                    {"key": "instruction", "label": "instruction", "kind": "long"}, {"key": "input", "label": "input", "kind": "long"},
                    {"key": "response", "label": "response", "kind": "long"}],
        "rows": rows, "note": f"first {len(rows):,} of {total:,} rows" if total > len(rows) else None}


# -- scores and selection ---------------------------------------------------------------------
def _scores_section(page: _Page, src: ReportSources, opts: ReportOptions) -> None:
    assert src.scored_file is not None
    cols = sv.read_score_columns(src.scored_file)
    if cols.n == 0 and src.augment_dir is None:
        raise InputError(str(src.scored_file), "no rows to report on (the file is empty)")
    if not cols.metrics and src.augment_dir is None and src.select_manifest is None:
        raise InputError(str(src.scored_file), f"none of its {cols.n:,} rows has a score (tss, tss_pp, ifd, ppl): "
                         f"score it first, e.g. `ontask score {src.scored_file} -o scored.jsonl`, and report on that")
    if cols.unreadable:
        page.notes.append(f"{len(cols.unreadable):,} unreadable rows in {src.scored_file} were left out "
                          f"(first: {cols.unreadable[0]})")
    selection = sv.read_selection(cols, src.select_manifest, src.dropped_file) if src.select_manifest else None
    kept = selection.kept if selection is not None else None
    page.card("scored rows", cols.n)
    if selection is not None:
        page.card(f"kept by {selection.by}", int(kept.sum()))
        if cols.tokens is not None:
            page.card("tokens kept", f"{int(np.nansum(cols.tokens[kept])):,} of {int(np.nansum(cols.tokens)):,}")
    for m in cols.metrics:
        h = sv.histogram(cols.values[m], kept)
        cutoff = selection.cutoff if selection is not None and selection.column == m else None
        if h:
            page.add_figure(f"hist_{m}", fg.histogram_figure(m, h, cutoff))

    if cols.specificity:
        page.add_figure("specificity", fg.specificity_figure(cols.specificity, cols.specificity_check))
        page.card("rows flagged: a violated constraint the output ignores", f"{cols.rows_flagged:,} of {cols.rows_with_constraints:,}")
    primary = sv.primary_metric(cols, selection)
    wanted_rows = sv.example_rows(cols, *primary, selection, opts.rows_per_group) if primary else []
    scatter_idx: np.ndarray = np.array([], dtype=np.int64)
    if "tss" in cols.metrics and "ifd" in cols.metrics:
        both = np.flatnonzero(np.isfinite(cols.values["tss"]) & np.isfinite(cols.values["ifd"]))
        scatter_idx = both[sv.sample_indices(len(both), opts.scatter_points, opts.seed)]
    records = sv.read_rows(cols.path, {i for i, _, _ in wanted_rows} | set(scatter_idx.tolist()))

    if len(scatter_idx):
        page.add_figure("scatter", fg.scatter_figure(
            x=cols.values["tss"][scatter_idx].tolist(), y=cols.values["ifd"][scatter_idx].tolist(),
            hover=[f"line {int(cols.lines[i])}: {fg.esc(records.get(int(i), {}).get('instruction'), 90)}" for i in scatter_idx],
            kept=kept[scatter_idx].tolist() if kept is not None else None,
            total=int(np.sum(np.isfinite(cols.values["tss"]) & np.isfinite(cols.values["ifd"])))))
    selected_point = None
    if selection is not None and cols.tokens is not None:
        selected_point = (float(np.nansum(cols.tokens[kept])), float(kept.sum()))
    page.add_figure("budget", fg.budget_figure(sv.budget_curves(cols), selected_point))

    page.tables["rows"] = _rows_table(cols, wanted_rows, records, selection)
    summary = [f"{cols.n:,} rows; metrics: {', '.join(sv.LABELS[m] for m in cols.metrics) or 'none'}."]
    if selection is not None:
        budget = selection.config.get("retain")
        budget_txt = f"retain {budget}" if budget is not None else f"max tokens {selection.config.get('max_tokens')}"
        cut = f", cut-off {selection.cutoff:.4g}" if selection.cutoff is not None else ""
        summary.append(f"Selection by {selection.by} ({budget_txt}): kept {int(kept.sum()):,}{cut}.")
    if primary:
        where = "either side of the cut-off" if selection is not None and selection.cutoff is not None else "around the median"
        note = (f"All {len(wanted_rows):,} ranked rows, by {sv.LABELS[primary[0]]}." if wanted_rows and wanted_rows[0][1] == "all"
                else f"The top, bottom and borderline ({where}) {opts.rows_per_group} rows by {sv.LABELS[primary[0]]}.")
    else:
        note = "No score column to rank rows by."
    page.scores = {"file": str(src.scored_file), "metrics": cols.metrics, "summary": " ".join(summary),
                   "table_note": note + " Search filters every column; click a header to sort, a row to read it whole."}


def _rows_table(cols: sv.ScoreColumns, wanted: list[tuple[int, str, int]], records: dict[int, dict[str, Any]],
                selection: sv.Selection | None) -> dict[str, Any]:
    columns = [{"key": "group", "label": "group", "kind": "text"}, {"key": "rank", "label": "rank", "kind": "num"},
               {"key": "line", "label": "line", "kind": "num"}]
    if selection is not None:
        columns.append({"key": "selection", "label": "selection", "kind": "text"})
    columns += [{"key": m, "label": sv.LABELS[m], "kind": "num"} for m in cols.metrics]
    extra_num = [k for k in ("tokens", "hop", "judge_mean") if any(k in r for r in records.values())]
    columns += [{"key": k, "label": k.replace("_", " "), "kind": "num"} for k in extra_num]
    if any("ignored_constraints" in r for r in records.values()):
        columns.append({"key": "ignored_constraints", "label": "ignored constraints", "kind": "long"})
    texts = [k for k in sv.TEXT_FIELDS if any(k in r for r in records.values())]
    labels = {"tss_top_alt": "strongest competing instruction (TSS)"}
    columns += [{"key": k, "label": labels.get(k, k), "kind": "long"} for k in texts]
    rows = []
    for i, group, rank in wanted:
        rec = records.get(i, {})
        row: list[Any] = [group, rank, int(cols.lines[i])]
        if selection is not None:
            row.append("kept" if selection.kept[i] else f"dropped: {selection.reasons[i]}")
        row += [_finite(cols.values[m][i]) for m in cols.metrics]
        row += [rec.get(k) if isinstance(rec.get(k), (int, float)) and not isinstance(rec.get(k), bool) else None for k in extra_num]
        if len(row) < len(columns) and columns[len(row)]["key"] == "ignored_constraints":
            ignored = rec.get("ignored_constraints")
            row.append(sv.clip("; ".join(map(str, ignored))) if isinstance(ignored, list) else None)
        row += [sv.clip(rec.get(k)) for k in texts]
        rows.append(row)
    return {"columns": columns, "rows": rows}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


# -- failures and settings --------------------------------------------------------------------
def _failures(page: _Page, src: ReportSources) -> None:
    runs = []
    if src.augment_dir is not None:
        runs.append(("augment", src.augment_dir / "failed.jsonl"))
    if src.scored_file is not None:
        runs.append(("score", src.score_failed_file))
    total = 0
    for name, path in runs:
        counts, recs = av.failures_by_stage(path)
        if not counts:
            continue
        total += sum(counts.values())
        page.failures.append({"run": name, "by_stage": counts})
        for r in recs:
            where = r.get("file") and f"{r.get('file')}:{r.get('line')}" or (
                f"seed {r.get('seed')} hop {r.get('hop')} state {r.get('state_hash')}" if r.get("state_hash") else "")
            page.failure_rows.append([name, r.get("stage"), where, r.get("model"), sv.clip(r.get("reason"))])
    page.card("failures recorded", total)


_AUGMENT_SHOWN = ("config", "judge_mode", "embedder", "database", "search", "versions", "templates", "timings_s")
_SCORE_SHOWN = ("config", "scorer", "embedder", "variants", "counts", "tokens_computed", "tokens_per_s", "tss_pp_stats",
                "timings", "cache", "versions")
_SELECT_SHOWN = ("config", "counts", "dropped_by_reason", "cutoff_score", "ppl_bounds", "timings", "versions")


def _settings(page: _Page, src: ReportSources) -> None:
    if src.augment_manifest:
        m = src.augment_manifest
        page.runs.append({"name": "augment", "path": str(src.augment_dir / "run.json") if src.augment_dir else "",
                          "models": _models(m.get("models") or {}), "blocks": _blocks(m, _AUGMENT_SHOWN)})
    if src.score_manifest:
        m = src.score_manifest
        page.runs.append({"name": "score", "path": str(src.score_manifest_file or ""),
                          "models": None, "blocks": _blocks(m, _SCORE_SHOWN)})
    if src.select_manifest:
        m = src.select_manifest
        page.runs.append({"name": "select", "path": str(src.select_manifest_file or ""),
                          "models": None, "blocks": _blocks(m, _SELECT_SHOWN)})


def _blocks(manifest: dict[str, Any], keys: tuple[str, ...]) -> list[tuple[str, Any]]:
    """The manifest's sections as titled tables; its loose scalars gathered under "run"."""
    out, loose = [], {}
    for k in keys:
        v = manifest.get(k)
        if v is None:
            continue
        if isinstance(v, (dict, list)):
            out.append(("timings (s)" if k == "timings_s" else k.replace("_", " "), v))
        else:
            loose[k.replace("_", " ")] = v
    return ([("run", loose)] if loose else []) + out


def _models(models: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for role, d in models.items():
        items = d if isinstance(d, list) else [d]
        for one in items:
            if not isinstance(one, dict):
                continue
            calls = one.get("calls") or {}
            out.append({"role": role, "name": one.get("name"), "backend": one.get("backend") or one.get("model"),
                        **{k: calls.get(k) for k in ("requests", "cached", "sent", "failed", "prompt_tokens", "completion_tokens")}})
    return out

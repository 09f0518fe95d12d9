"""Plotly figures for the report, built from the views' plain data.

Plotly (its Python package ships the plotly.js bundle, so the page needs no network and
the project no vendored JavaScript) gives funnels, histograms, density lines, scatters
and bars with zoom and hover in one library. Figures are built with `graph_objects`, which
validates every property name, then serialised to plain JSON for the page; the styling
template is sent once for all figures instead of once per figure.

Plotly renders a small HTML subset inside labels and hover text (`<b>`, `<a href>`), so
every piece of data text placed in a figure goes through `esc` first: it is then shown
as the characters it is, never as markup.
"""

from __future__ import annotations

import json
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from .scores_view import LABELS

KEPT, DROPPED, ALL = "#1b9e77", "#b8b8b8", "#4c78a8"
_TEMPLATE = "plotly_white"


def esc(text: Any, limit: int | None = None) -> str:
    """Data text for a Plotly label or hover: cut to `limit` characters, markup-escaped."""
    s = "" if text is None else str(text)
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "\u2026"
    # Plotly decodes numeric entities and &amp; &lt; &gt;, but not &quot;: quotes go numeric.
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;").replace("'", "&#39;")


def template() -> dict[str, Any]:
    """The one styling template every figure in the page shares."""
    return json.loads(pio.json.to_json_plotly(pio.templates[_TEMPLATE].to_plotly_json()))


def to_plain(fig: go.Figure) -> dict[str, Any]:
    """A figure as JSON-ready data and layout, without the per-figure copy of the template."""
    plain = json.loads(pio.to_json(fig, validate=False))
    plain["layout"].pop("template", None)
    return {"data": plain["data"], "layout": plain["layout"]}


def _layout(fig: go.Figure, title: str, x: str | None = None, y: str | None = None, height: int = 340) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01, "font": {"size": 15}}, height=height,
                      margin={"l": 60, "r": 20, "t": 48, "b": 48})
    if x:
        fig.update_xaxes(title_text=x)
    if y:
        fig.update_yaxes(title_text=y)
    return fig


# -- augmentation ---------------------------------------------------------------------------
def funnel_figure(f: dict[str, Any]) -> go.Figure:
    stages = [s for s in f["stages"] if s["count"] is not None]
    fig = go.Figure(go.Funnel(y=[f"{s['label']} ({s['unit']})" for s in stages], x=[s["count"] for s in stages],
                              textinfo="value", marker={"color": ALL}))
    return _layout(fig, "Funnel: from explored states to kept rows", height=360)


def drops_figure(f: dict[str, Any]) -> go.Figure | None:
    if not f["drops"]:
        return None
    reasons = list(f["drops"])[::-1]
    fig = go.Figure(go.Bar(y=[r.replace("_", " ") for r in reasons], x=[f["drops"][r] for r in reasons],
                           orientation="h", marker={"color": DROPPED}, text=[f["drops"][r] for r in reasons]))
    return _layout(fig, "Why states and rows were dropped", x="count", height=max(220, 40 + 34 * len(reasons)))


def diversity_figure(d: dict[str, Any]) -> go.Figure | None:
    hops = [h for h in d["hops"] if h["mean"] is not None]
    if not hops:
        return None
    fig = go.Figure()
    for h in d["hops"]:
        if h["mean"] is None:  # a legend line saying why a hop has no curve
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line={"color": "rgba(0,0,0,0)"},
                                     name=f"hop {h['hop']}: fewer than 2 {d['of']} instructions"))
    if any(h["density"] for h in hops):
        for h in hops:
            if h["density"]:
                fig.add_trace(go.Scatter(x=h["density"]["x"], y=h["density"]["y"], mode="lines", fill="tozeroy",
                                         name=f"hop {h['hop']}: mean {h['mean']:.3f} ({h['pairs']:,} pairs)"))
        for h in hops:
            fig.add_vline(x=h["mean"], line_dash="dot", line_color="#555", line_width=1)
        fig.update_layout(showlegend=True)  # the legend carries each hop's mean, even for one hop
        _layout(fig, f"Diversity per hop: density of 1 \u2212 cosine over pairs of {d['of']} instructions",
                x="1 \u2212 cosine similarity", y="density")
    else:  # manifests from before the pair samples were kept: means only
        fig.add_trace(go.Bar(x=[f"hop {h['hop']}" for h in hops], y=[h["mean"] for h in hops], marker={"color": ALL},
                             text=[f"{h['mean']:.3f}" for h in hops]))
        _layout(fig, f"Diversity per hop: mean 1 \u2212 cosine of {d['of']} instructions", y="mean 1 \u2212 cosine")
    return fig


def on_task_figure(rows: list[dict[str, Any]]) -> go.Figure | None:
    rows = [r for r in rows if r["hop"] != "all"]
    if not rows:
        return None
    fig = go.Figure(go.Bar(x=[f"hop {r['hop']}" for r in rows], y=[r["ratio"] for r in rows], marker={"color": KEPT},
                           text=[f"{r['ratio']:.0%} of {r['judged']}" if r["ratio"] is not None else f"none judged"
                                 for r in rows], textposition="outside"))
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%")
    return _layout(fig, "On-task ratio per hop (share of judged instructions still on the seed's task)",
                   y="on task")


def categories_figure(c: dict[str, Any]) -> go.Figure | None:
    if not c["categories"]:
        return None
    names = [esc(x, 40) for x in c["categories"]]
    fig = go.Figure([go.Bar(x=names, y=c["explored"], name="in explored states", marker={"color": DROPPED}),
                     go.Bar(x=names, y=c["valid"], name="in valid instructions", marker={"color": KEPT})])
    fig.update_layout(barmode="group")
    return _layout(fig, "Constraint categories", y="constraints")


def top_constraints_figure(c: dict[str, Any]) -> go.Figure | None:
    top = c["top"][::-1]
    if not top:
        return None
    fig = go.Figure(go.Bar(y=[esc(t["text"], 60) for t in top], x=[t["count"] for t in top], orientation="h",
                           marker={"color": ALL}, hovertext=[f"{esc(t['text'], 300)}<br>category: {esc(t['category'])}"
                                                             for t in top], hoverinfo="text+x"))
    fig.update_yaxes(automargin=True)
    return _layout(fig, f"Most used constraints in valid instructions ({c['distinct_valid']:,} distinct)",
                   x="valid instructions using it", height=max(260, 60 + 24 * len(top)))


# -- scores and selection --------------------------------------------------------------------
def histogram_figure(metric: str, h: dict[str, Any], cutoff: float | None) -> go.Figure:
    edges = h["edges"]
    centers = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    width = edges[1] - edges[0]
    if "all" in h:
        traces = [go.Bar(x=centers, y=h["all"], width=width, name="rows", marker={"color": ALL})]
    else:
        traces = [go.Bar(x=centers, y=h["kept"], width=width, name="kept", marker={"color": KEPT}),
                  go.Bar(x=centers, y=h["dropped"], width=width, name="dropped", marker={"color": DROPPED})]
    fig = go.Figure(traces)
    fig.update_layout(barmode="stack", bargap=0)
    note = []
    if h["outside"]:
        note.append(f"{h['outside']:,} far outliers not drawn")
    if h["missing"]:
        note.append(f"{h['missing']:,} without a value")
    title = f"{LABELS.get(metric, metric)}: {h['rows']:,} rows, median {h['median']:.4g}"
    if note:
        title += f" <span style='font-size:11px;color:#666'>({'; '.join(note)})</span>"
    if cutoff is not None:
        fig.add_vline(x=cutoff, line_color="#d62728", line_dash="dash", line_width=2,
                      annotation_text=f"cut-off {cutoff:.4g}", annotation_position="top")
    return _layout(fig, title, x=LABELS.get(metric, metric), y="rows", height=300)


def scatter_figure(x: list[float], y: list[float], hover: list[str], kept: list[bool] | None, total: int) -> go.Figure:
    def trace(mask_value: bool | None, name: str, color: str) -> go.Scatter:
        pick = [i for i in range(len(x)) if kept is None or kept[i] == mask_value]
        return go.Scatter(x=[x[i] for i in pick], y=[y[i] for i in pick], hovertext=[hover[i] for i in pick],
                          hoverinfo="text+x+y", mode="markers", name=name,
                          marker={"color": color, "size": 5 if len(x) > 500 else 9, "opacity": 0.7})

    traces = [trace(None, "rows", ALL)] if kept is None else [trace(False, "dropped", DROPPED), trace(True, "kept", KEPT)]
    fig = go.Figure(traces)
    fig.add_hline(y=1.0, line_dash="dot", line_color="#888", annotation_text="IFD = 1: the instruction does not help",
                  annotation_position="bottom right")
    fig.add_vline(x=0.0, line_dash="dot", line_color="#888")
    shown = f"{len(x):,} of {total:,} rows" if len(x) < total else f"{total:,} rows"
    return _layout(fig, f"TSS against IFD ({shown}); right: the instruction determines the output, "
                        "low: it helps", x="TSS", y="IFD", height=420)


def budget_figure(curves: dict[str, dict[str, list[float]]], selected: tuple[float, float] | None) -> go.Figure | None:
    if not curves:
        return None
    fig = go.Figure([go.Scatter(x=c["tokens"], y=c["rows"], mode="lines", name=f"ranked by {LABELS.get(m, m)}")
                     for m, c in curves.items()])
    if selected is not None:
        fig.add_trace(go.Scatter(x=[selected[0]], y=[selected[1]], mode="markers", name="this selection",
                                 marker={"color": "#d62728", "size": 11, "symbol": "x"}))
    return _layout(fig, "Rows kept as the token budget grows", x="token budget (prompt + output tokens)",
                   y="rows kept", height=360)


def specificity_figure(values: list[float], checks: list[bool | None]) -> go.Figure | None:
    """Per-constraint specificity, split by what the code check said of the same constraint."""
    if not values:
        return None
    groups = [("violated (checker)", False, "#d62728"), ("passed (checker)", True, KEPT), ("no checker", None, DROPPED)]
    fig = go.Figure()
    for name, flag, color in groups:
        xs = [v for v, c in zip(values, checks) if c is flag]
        if xs:
            fig.add_trace(go.Histogram(x=xs, name=f"{name}: {len(xs):,}", marker={"color": color}, opacity=0.75, nbinsx=40))
    fig.update_layout(barmode="overlay")
    fig.add_vline(x=0.0, line_dash="dot", line_color="#555")
    return _layout(fig, "Per-constraint specificity: lp(output | instruction) \u2212 lp(output | without the constraint)",
                   x="specificity (<= 0: the output does not depend on the constraint)", y="constraints", height=340)

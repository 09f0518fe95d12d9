"""The page: one HTML file with its styles, scripts and data inside it.

Escaping is done in exactly two places. Values printed by the template go through
Jinja2's autoescaping. The data for figures, tables and the lineage tree is one JSON
document inside `<script type="application/json">`, serialised by `script_json`, which
escapes `<`, `>` and `&` (so no `</script>` or `<!--` in the data can end the element
early) and the two line separators JavaScript once treated as newlines; report.js reads
it with JSON.parse and writes text into the page only through textContent.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib.resources import files
from typing import Any

import jinja2

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(obj: Any) -> str:
    """`obj` as JSON that is safe to place verbatim inside a <script> element."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_plain)
    for raw, escaped in _ESCAPES.items():
        text = text.replace(raw, escaped)
    return text


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def fmt(value: Any) -> str:
    """Numbers in settings tables: floats to 4 significant digits, the rest as they are."""
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("ontask.report", "assets"),
                             autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    return env


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    if "</script" in js.lower():  # would end the inline element early
        raise RuntimeError("the plotly.js bundle contains '</script'; it cannot be inlined")
    return js


def _asset(name: str) -> str:
    return (files("ontask.report") / "assets" / name).read_text(encoding="utf-8")


def render_page(context: dict[str, Any]) -> str:
    """The whole page for a context made by `build.py` (its `data` becomes the JSON block)."""
    ctx = dict(context)
    data = ctx.pop("data")
    return _environment().get_template("report.html.jinja").render(
        **ctx, data_json=script_json(data), css=_asset("report.css"), report_js=_asset("report.js"),
        plotly_js=_plotly_js())

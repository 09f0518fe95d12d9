"""`ontask report`: a self-contained HTML report of augment, score and select runs.

`build_report(source, output)` finds the runs (`sources`), aggregates what to show
(`augment_view`, `scores_view`), draws it (`figures`, Plotly) and writes one HTML file
(`render`, with `assets/` holding the template, styles and script).
"""

from .build import build_report
from .config import ReportOptions
from .sources import ReportSources, find_sources

__all__ = ["ReportOptions", "ReportSources", "build_report", "find_sources"]

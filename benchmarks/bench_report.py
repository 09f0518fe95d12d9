"""How big the report gets and how fast it is built and drawn, by number of scored rows.

    .venv/bin/python benchmarks/bench_report.py [--rows 10000,100000,300000]

For each size: synthetic scored rows (ontask.testing.synthetic), `ontask select --by tss
--retain 0.1`, then `build_report`; the page is opened in headless Chromium (Debian's
package) and timed from navigation to every figure drawn. Needs `chromium` installed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ontask.report import build_report
from ontask.selection import SelectConfig, run_select
from ontask.testing.browser import browser, open_report
from ontask.testing.synthetic import write_scored_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="10000,100000,300000")
    args = ap.parse_args()
    table = Table(title="ontask report: size and speed")
    for col in ("rows", "data file MB", "report MB", "build s", "ready in Chromium s", "console errors"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp, browser() as b:
        for n in (int(x) for x in args.rows.split(",")):
            root = Path(tmp) / str(n)
            scored = write_scored_rows(root / "scored" / "data.jsonl", n)
            run_select(scored, root / "selected" / "data.jsonl", SelectConfig(by="tss", retain=0.1))
            t0 = time.perf_counter()
            summary = build_report(root / "selected", root / "report.html")
            build_s = time.perf_counter() - t0
            with open_report(b, root / "report.html") as (_, log):
                ready = log.ready_s
            table.add_row(f"{n:,}", f"{scored.stat().st_size / 1e6:.0f}", f"{summary['bytes'] / 1e6:.2f}",
                          f"{build_s:.2f}", f"{ready:.2f}", str(len(log.console_errors) + len(log.errors)))
    Console().print(table)


if __name__ == "__main__":
    main()

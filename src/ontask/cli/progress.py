"""A rich progress bar showing rows, rows/s and tokens/s for long runs."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def row_progress(console: Console, total: int | None, label: str) -> Iterator:
    """Yields `update(rows_done_delta, tokens_total)` for the scoring pipeline. The bar appears
    at the first update, so a run that stops before any work (a refused setting, a server
    that cannot give its template) prints its error without an empty bar above it."""
    start = time.perf_counter()
    columns = [
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    ]
    bar = Progress(*columns, console=console, transient=False)
    task = bar.add_task(label, total=total, rate="")
    started = False

    def update(rows: int, tokens: int) -> None:
        nonlocal started
        if not started:
            bar.start()
            started = True
        dt = max(time.perf_counter() - start, 1e-9)
        done = bar.tasks[0].completed + rows
        bar.update(task, advance=rows, rate=f"{done / dt:.1f} rows/s, {tokens:,} tok ({tokens / dt:,.0f} tok/s)")

    try:
        yield update
    finally:
        if started:
            bar.stop()


@contextmanager
def stage_progress(console: Console) -> Iterator:
    """Yields `stage(name, total) -> tick(n)`: one bar per pipeline stage, with items/s."""
    start = time.perf_counter()
    columns = [
        TextColumn("[bold]{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as bar:

        def stage(name: str, total: int | None):
            task = bar.add_task(name, total=total, rate="")
            if total == 0:
                bar.update(task, completed=0)  # nothing to do: finished now, so its clock stops
            t0 = time.perf_counter()

            def tick(n: int = 1) -> None:
                done = bar.tasks[task].completed + n
                bar.update(task, advance=n, rate=f"{done / max(time.perf_counter() - t0, 1e-9):.1f}/s")

            return tick

        yield stage
    del start

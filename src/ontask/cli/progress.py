"""A rich progress bar showing rows, rows/s and tokens/s for long runs."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def pass_progress(console: Console, rows: int | None, passes: int | None, label: str,
                  cost: Callable[[int], float | None] = lambda tokens: None) -> Iterator:
    """Yields `update(rows_done, passes_done, tokens_total)` for the scoring pipeline: the bar
    counts passes (it moves at every forward batch; the total is at most `passes`, fewer
    when hard alternatives skip near duplicates) and shows rows finished and tokens/s. The
    bar appears at the first update, so a run that stops before any work (a refused setting,
    a server that cannot give its template) prints its error without an empty bar above it.
    `cost(tokens)` gives the spent cost of a priced scorer (None: no price), shown beside."""
    start = time.perf_counter()
    columns = [
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("passes"),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    ]
    bar = Progress(*columns, console=console, transient=False)
    task = bar.add_task(label, total=passes, rate="")
    started, rows_done = False, 0

    def update(rows_delta: int, passes_delta: int, tokens: int) -> None:
        nonlocal started, rows_done
        if not started:
            bar.start()
            started = True
        rows_done += rows_delta
        dt = max(time.perf_counter() - start, 1e-9)
        of = f"/{rows:,}" if rows is not None else ""
        spent = cost(tokens)
        money = f", ${spent:,.4f}" if spent is not None else ""
        bar.update(task, advance=passes_delta,
                   rate=f"rows {rows_done:,}{of}, {tokens:,} tok ({tokens / dt:,.0f} tok/s){money}")

    try:
        yield update
    finally:
        if started:
            if bar.tasks[0].total is not None and rows is not None and rows_done >= rows:
                bar.update(task, total=bar.tasks[0].completed)  # fewer passes than the most: the bar ends full
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

"""`ontask batches RUN_DIR`: the provider batches a run created, their states; cancel them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

def batches_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder with batch roles (or its batches.jsonl)."),
    refresh: bool = typer.Option(False, "--refresh", help="Ask each provider for the current states."),
    cancel: Optional[str] = typer.Option(None, "--cancel", help="Cancel a batch that has not ended (its id, or 'all')."),
) -> None:
    """List a run's provider batches (augment --batch): id, state, requests, answered, failed."""
    from .. import api

    try:
        records = api.run_batches_of(run_dir, refresh=refresh, cancel=cancel)
    except (FileNotFoundError, ValueError) as err:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {err}")  # never hard-wrapped mid-word
        raise typer.Exit(2) from None
    table = Table(title=f"batches of {run_dir}")
    for col in ("batch", "state", "requests", "answered", "failed", "created", "provider"):
        table.add_column(col)
    for rec in records:
        counts = rec.get("request_counts") or {}
        created = dt.datetime.fromtimestamp(rec["at"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if rec.get("at") else ""
        table.add_row(rec["batch_id"], rec["status"], str(len(rec["custom_ids"])), str(counts.get("completed", "")),
                      str(counts.get("failed", "")), created, str(rec.get("provider", "")))
    Console().print(table)  # made here: it reads the terminal's width (COLUMNS) when the command runs


def register(app: typer.Typer) -> None:
    app.command(name="batches")(batches_cmd)

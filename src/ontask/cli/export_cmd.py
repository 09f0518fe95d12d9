"""`ontask export`: rows in the layout TRL, axolotl or LLaMA-Factory reads, with a dataset card."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..records import InputError
from .config_file import merged

console = Console(stderr=True, soft_wrap=True)  # errors are never hard-wrapped mid-word

EPILOG = ("Examples:\n\n  ontask export out/top.jsonl -o train.jsonl --format messages\n\n"
          "  ontask export run/ -o train_sharegpt.parquet --format sharegpt --system 'You are a support agent.'\n\n"
          "  ontask export scored.jsonl -o train_ds --format alpaca --keep tss,category")


class Format(str, Enum):
    """The layouts written (mirrors `ontask.export.FORMATS`; typer names the flag on a bad value)."""

    messages = "messages"
    sharegpt = "sharegpt"
    alpaca = "alpaca"


def export_cmd(
    source: Path = typer.Argument(..., help="Any data file ontask reads, an ontask output, a run folder or a saved dataset."),
    output: Path = typer.Option(..., "-o", "--output", help="A .jsonl or .parquet file, or a folder (a Hugging Face dataset, save_to_disk)."),
    format: Optional[Format] = typer.Option(None, "--format", help="messages (TRL), sharegpt (axolotl, LLaMA-Factory) or alpaca; default messages."),
    system: Optional[str] = typer.Option(None, "--system", help="A system prompt for every row (replaces the rows' own; '' drops them)."),
    keep: Optional[str] = typer.Option(None, "--keep", help="Input columns to carry into each row, e.g. tss,category (default none)."),
    columns: Optional[str] = typer.Option(None, help="Column names when the layout is not recognised: instruction=q,input=ctx,output=a."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Export only the first N rows (to try a slice)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of settings; flags override it.", exists=True, dir_okay=False),
) -> None:
    """Write the rows in a trainer's layout, and a dataset card (README.md) beside them.

    The user turn is the instruction and the input joined as ontask scores them.

    The card lists the rows that could not be read, the recipe, models, score definitions and selection.
    """
    try:
        settings = merged(config, "export", dict(format=format.value if format else None, system=system, keep=keep,
                                                 columns=columns, limit=limit))
    except ValueError as err:
        _fail(str(err))
    write_export(source, output, settings)


def write_export(source: Path, output: Path, settings: dict) -> dict:
    from ..export import export

    unknown = sorted(set(settings) - {"format", "system", "keep", "columns", "limit"})
    if unknown:
        _fail(f"unknown setting {unknown[0]!r} for export")
    try:
        with console.status(f"exporting {source}"):
            summary = export(source, output, **settings)
    except (InputError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    c = summary["counts"]
    console.print(f"exported {c['exported']:,} rows ({summary['format']}) to [bold]{escape(summary['output'])}[/]; "
                  f"skipped {c['skipped']:,}")
    for reason, count in sorted(summary["skipped_by_reason"].items(), key=lambda kv: -kv[1]):
        console.print(f"  skipped {count:>6}  {escape(reason)}", highlight=False)
    console.print(f"dataset card: {escape(summary['card'])}")
    return summary


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # messages quote user text: no markup
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command("export", epilog=EPILOG)(export_cmd)

"""`ontask report`: one self-contained HTML file from run folders or a scored file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console

from ..records import InputError
from .config_file import merged

console = Console(stderr=True, soft_wrap=True)  # errors are never hard-wrapped mid-word

EPILOG = ("Examples:\n\n  ontask report ontask-demo/ -o report.html\n\n"
          "  ontask report run/ -o run/report.html --rows-per-group 100\n\n"
          "  ontask report scored.parquet -o scored.html --title 'support replies, week 12'")


def report_cmd(
    source: Path = typer.Argument(..., help="A run folder (augment, score or select), the demo's folder, or a scored data file."),
    output: Path = typer.Option(..., "-o", "--output", help="The HTML file to write."),
    title: Optional[str] = typer.Option(None, help="Page title."),
    rows_per_group: Optional[int] = typer.Option(None, help="Top, bottom and borderline rows in the table (default 50 each)."),
    scatter_points: Optional[int] = typer.Option(None, help="Rows drawn in the TSS-IFD scatter (default 4000, a seeded sample)."),
    tree_nodes: Optional[int] = typer.Option(None, help="Lineage states shown (default 3000, the furthest-reaching first)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of settings; flags override it.", exists=True, dir_okay=False),
) -> None:
    """Plots and tables of a run in one HTML file that opens offline in any browser."""
    from ..report import ReportOptions

    try:
        opts = ReportOptions(**merged(config, "report", dict(
            title=title, rows_per_group=rows_per_group, scatter_points=scatter_points, tree_nodes=tree_nodes)))
    except (ValueError, ValidationError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2)
    write_report(source, output, opts)


def write_report(source: Path, output: Path, opts=None) -> dict:
    from ..report import build_report

    try:
        with console.status(f"reading {source}"):
            summary = build_report(source, output, opts)
    except (InputError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2)
    console.print(f"report: [bold]{Path(summary['output']).resolve()}[/] ({summary['bytes'] / 1e6:.1f} MB, "
                  f"{len(summary['figures'])} plots, sections: {', '.join(summary['sections'])}; {summary['seconds']:.1f} s)")
    return summary


def register(app: typer.Typer) -> None:
    app.command("report", epilog=EPILOG)(report_cmd)

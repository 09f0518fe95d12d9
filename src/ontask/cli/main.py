"""`ontask`: score, select, demo (augment, decompose, db and eval in tcia_cmds, report in report_cmd).

Each command validates its settings before loading a model."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from ..records import InputError
from ..models.roles import apply_model_options
from ..records import settings_error
from ..runs import side_file
from .config_file import merged
from .progress import pass_progress

_STARTED = time.perf_counter()  # the command's start, before the heavy imports: --dry-run counts them in
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Task-specific instruction-tuning data: augment, score, select.")
console = Console(stderr=True, soft_wrap=True)  # errors are never hard-wrapped mid-word (logs, narrow terminals)
ConfigOpt = typer.Option(None, "--config", help="YAML file of settings; flags override it.", exists=True, dir_okay=False)


def _show_version(value: bool) -> None:
    if value:
        from .._version import __version__

        typer.echo(f"ontask {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                        help="Print the version and exit.")) -> None:
    """Task-specific instruction-tuning data: augment, score, select."""


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _quiet_libraries() -> None:
    from ..api import quiet_libraries

    quiet_libraries()


ModelOpt = typer.Option(None, "--model", help="The model of every role not given its own flag (e.g. openai:qwen).")
ModelOptionOpt = typer.Option(None, "--model-option", help="ROLE.OPTION=VALUE (or OPTION=VALUE for every role), repeatable: "
                              "base_url, api_key_env, template, mode, concurrency, timeout, max_retries, structured, "
                              "device, dtype, batch_tokens, batch_size, max_length.")


@app.command(epilog="Examples:\n\n  ontask score data.jsonl -o out/ --metrics ppl,ifd,tss,tss++ -k 4\n\n  ontask score alpaca.parquet -o scored.parquet --alternatives hard --scorer hf:/models/qwen\n\n"
                     "  ontask score run/data.jsonl -o scored/ --alternatives variants --db db/ --composer openai:gpt-4.1 --base-url URL")
def score(
    input: Path = typer.Argument(..., help="JSONL, JSON, Parquet, CSV or a saved Hugging Face dataset."),
    output: Path = typer.Option(..., "-o", "--output", help="Output file (.jsonl/.parquet) or folder."),
    metrics: Optional[str] = typer.Option(None, help="Comma list of ppl,ifd,ifd_ppl,tss,tss++ (default: ppl,ifd,tss,tss++)."),
    alternatives: Optional[str] = typer.Option(None, help="random | hard | variants (default: random). variants: the "
                                               "instruction with one constraint removed or replaced (also gives per-constraint specificity)."),
    k: Optional[int] = typer.Option(None, "-k", help="Alternatives per row (default: 4)."),
    aggregator: Optional[str] = typer.Option(None, help="logmeanexp | mean | max."),
    lam: Optional[float] = typer.Option(None, "--lambda", help="TSS++ quality weight (default 0; needs --quality)."),
    quality: Optional[str] = typer.Option(None, help="TSS++ quality term: none (default) | lp | 1-ifd."),
    hard_pick: Optional[str] = typer.Option(None, "--hard-pick", help="TSS++ alternatives: likelihood (default: the k "
                                            "most likely of --hard-pool nearest) | embedding (the k nearest)."),
    hard_pool: Optional[int] = typer.Option(None, "--hard-pool", help="TSS++: nearest instructions scored (default 8)."),
    scorer: Optional[str] = typer.Option(None, help="embedded | hf:PATH | openai:MODEL | vllm:PATH."),
    model: Optional[str] = ModelOpt,
    model_option: Optional[list[str]] = ModelOptionOpt,
    base_url: Optional[str] = typer.Option(None, help="Server URL for openai: scorers."),
    embedder: Optional[str] = typer.Option(None, help="Sentence embedder for hard alternatives."),
    columns: Optional[str] = typer.Option(None, help="instruction=COL,input=COL,output=COL for other layouts."),
    seed: Optional[int] = typer.Option(None),
    limit: Optional[int] = typer.Option(None, help="Score only the first N rows (try a slice before the whole file)."),
    sample: Optional[int] = typer.Option(None, help="Score N rows drawn at random (seeded by --seed), kept in file order."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print rows, passes, tokens, estimated time (calibrated on "
                                 "the model) and cost, then stop; the calibration's passes are cached for the run."),
    max_tokens_spent: Optional[int] = typer.Option(None, help="Stop once the computed passes reach N tokens (exit 3; "
                                                   "rerun with a larger budget to resume)."),
    max_cost: Optional[float] = typer.Option(None, help="Stop once the scorer's spent cost reaches this many USD (needs "
                                             "its price: --model-option scorer.input_price=USD_PER_MILLION)."),
    batch_tokens: Optional[int] = typer.Option(None, help="Tokens per forward batch (padded; on the fused CPU forward: distinct tokens). Default: the scorer's."),
    batch: Optional[bool] = typer.Option(None, "--batch", help="An openai: scorer (and chat roles) through the "
                                         "provider's batch API: about half the price, answered within hours; a "
                                         "killed run resumes its batches."),
    decomposer: Optional[str] = typer.Option(None, help="variants: model that decomposes rows without base_query/constraints."),
    composer: Optional[str] = typer.Option(None, help="variants: model that writes an edited constraint set back as an instruction."),
    verifier: Optional[str] = typer.Option(None, help="variants: model that checks a written variant states its constraints."),
    db: Optional[str] = typer.Option(None, help="variants: constraint database for Replace variants (none: Remove only)."),
    check: Optional[bool] = typer.Option(None, "--check/--no-check", help="variants: verify outputs against code-checkable constraints (default: on)."),
    engine: Optional[str] = typer.Option(None, help="local | ray: run the passes in Ray actors (pip install 'ontask[ray]')."),
    ray_address: Optional[str] = typer.Option(None, help="ray: join this cluster (auto, ray://HOST:10001); default: a local Ray."),
    workers: Optional[int] = typer.Option(None, help="ray: scorer actors, one model each (default: one per GPU, else per CPU)."),
    cache: Optional[Path] = typer.Option(None, help="Result cache file (default: ~/.cache/ontask/cache.sqlite)."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Score every row by how much its instruction determines its output (TSS, TSS++, IFD, perplexity).

    A killed or interrupted run resumes from the cache when started again: finished passes are never recomputed.
    """
    from ..io import parse_columns
    from ..scoring import ScoreConfig, parse_metrics

    try:
        flags = dict(
            metrics=parse_metrics(metrics) if metrics else None, alternatives=alternatives, k=k,
            aggregator=aggregator, lam=lam, quality=quality, hard_pick=hard_pick, hard_pool=hard_pool,
            scorer=scorer, base_url=base_url,
            embedder=embedder, columns=parse_columns(columns) if columns else None, seed=seed, limit=limit,
            sample=sample, max_tokens_spent=max_tokens_spent, max_cost=max_cost, batch_tokens=batch_tokens, batch=batch, decomposer=decomposer, composer=composer, verifier=verifier, db=db, check=check,
            engine=engine, ray_address=ray_address, workers=workers, model=model,
        )
        apply_model_options(flags, model_option, ScoreConfig.scoring_roles + ScoreConfig.chat_roles)
        cfg = ScoreConfig(**merged(config, "score", flags))
    except (ValueError, ValidationError) as err:
        _fail(settings_error(err))
    if not input.exists():
        _fail(f"{input}: no such file or folder")
    if dry_run:
        _dry_run(input, output, cfg, cache)
        return
    _run_score(input, output, cfg, cache)


def _dry_run(input: Path, output: Path, cfg, cache_path: Path | None) -> None:
    from .. import api
    from ..runs import check_output_name

    try:
        check_output_name(output)
        est = api.estimate(input, cfg, cache_path=cache_path, status=console.status, started=_STARTED)
    except (InputError, ValueError, FileNotFoundError, RuntimeError) as err:
        _fail(str(err))
    cal = est["calibration"]
    table = Table(title=f"dry run: ontask score {input}", title_justify="left", show_header=False)
    table.add_column("", no_wrap=True)  # labels stay whole at any terminal width
    table.add_column("", justify="right")
    for name, value in [
        ("rows", f"{est['rows']:,}" + (f" (+{est['rows_failed_to_read']} unreadable)" if est["rows_failed_to_read"] else "")),
        ("passes (at most per row)", f"{est['passes_needed']:,} ({est['passes_per_row']})"),
        ("passes cached", f"{est['passes_cached']:,}"),
        ("passes to compute", f"{est['passes_to_compute']:,}"),
        ("tokens to compute", f"{est['tokens_to_compute']:,}"),
        ("calibration", f"{cal['passes']} passes of {cal['rows']} rows, {cal['seconds']:.1f} s, "
                        f"{cal['tokens_per_s'] or 0:,.0f} tok/s (cached for the run)"
                        + (f", ${est['calibration_cost_usd']:.4f} spent" if est["calibration_cost_usd"] is not None else "")),
        ("estimated time", _seconds(est["estimated_wall_s"]) + f" (setup {est['setup_s']:.0f} s, alternatives "
                           f"{est['alternatives_s']:.0f} s, passes {_seconds(est['estimated_score_s'])})"),
        ("estimated cost", f"${est['estimated_cost_usd']:.4f}" if est["estimated_cost_usd"] is not None
         else "no price set (models.scorer.input_price, USD per million tokens)"),
    ]:
        table.add_row(name, value)
    Console().print(table)


def _seconds(s: float | None) -> str:
    if s is None:
        return "unknown"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _run_score(input: Path, output: Path, cfg, cache_path: Path | None) -> dict:
    from .. import api
    from ..api import BudgetReached

    try:
        total = api.count_rows(input, cfg)
        passes = total * cfg.passes_per_row if total is not None else None
        with pass_progress(console, total, passes, "score", cost=cfg.spec_for("scorer").cost) as update:
            manifest = api.score(input, output, cfg, cache_path=cache_path, progress=update, status=console.status)
    except KeyboardInterrupt:
        _fail("interrupted; run the same command again to resume (every finished batch of passes is cached)", 130)
    except BudgetReached as err:
        _fail(f"stopped: {err}. Every finished batch of passes is cached: run again with a larger budget "
              "(or none) to resume where this run stopped", 3)
    except (InputError, ValueError, FileNotFoundError, RuntimeError) as err:
        _fail(str(err))
    c = manifest["counts"]
    console.print(
        f"scored [bold]{c['rows_scored']}[/] rows, {c['rows_failed']} failed "
        f"(passes: {c['passes_computed']} computed, {c['passes_cached']} cached; "
        f"{manifest['tokens_per_s'] or 0:,.0f} tok/s)"
    )
    if manifest.get("tss_pp_definition"):
        console.print(f"tss++: {manifest['tss_pp_definition']['definition']}")
    console.print(f"output: {manifest['output']}\nmanifest: {side_file(manifest['output'], 'run.json')}")
    if c["rows_failed"]:
        console.print(f"[yellow]failures with reasons:[/] {manifest['failed']}")
    return manifest


@app.command(epilog="Examples:\n\n  ontask select scored.jsonl -o top.jsonl --by tss --retain 0.05\n\n  ontask select scored.jsonl -o top.jsonl --by tss++ --max-tokens 2000000 --ifd-max 1 --diversity 0.9")
def select(
    input: Path = typer.Argument(..., help="A file written by `ontask score`."),
    output: Path = typer.Option(..., "-o", "--output"),
    by: Optional[str] = typer.Option(None, help="tss | tss++ | ifd | ifd_ppl | ppl (default: tss), or a baseline that "
                                     "needs no score: random (seeded order) | length (longest output first)."),
    retain: Optional[float] = typer.Option(None, help="Share of rows to keep, e.g. 0.05."),
    max_tokens: Optional[int] = typer.Option(None, help="Token budget (prompt + output, scorer tokenizer)."),
    ifd_max: Optional[float] = typer.Option(None, help="Drop rows with IFD above this (1: the instruction hurts)."),
    ppl_min_pct: Optional[float] = typer.Option(None, help="Drop rows below this perplexity percentile."),
    ppl_max_pct: Optional[float] = typer.Option(None, help="Drop rows above this perplexity percentile."),
    diversity: Optional[float] = typer.Option(None, help="Skip rows whose instruction has cosine above this to a kept one."),
    stratify: Optional[str] = typer.Option(None, help="Column whose groups (e.g. category, task type) share the budget "
                                           "in proportion to their size, ranked within each group."),
    stratify_min: Optional[int] = typer.Option(None, help="With --stratify: keep at least this many rows of each group."),
    seed: Optional[int] = typer.Option(None, help="Seed of --by random and of the random baseline in select.json (default 0)."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Keep the best rows under a budget; write the kept rows, dropped.jsonl and select.json."""
    from ..selection import SelectConfig

    try:
        cfg = SelectConfig(**merged(config, "select", dict(
            by=by, retain=retain, max_tokens=max_tokens, ifd_max=ifd_max,
            ppl_min_pct=ppl_min_pct, ppl_max_pct=ppl_max_pct, diversity=diversity, stratify=stratify,
            stratify_min=stratify_min, seed=seed)))
    except (ValueError, ValidationError) as err:
        _fail(settings_error(err))
    if not input.exists():
        _fail(f"{input}: no such file or folder")
    _run_select(input, output, cfg)


def _run_select(input: Path, output: Path, cfg) -> dict:
    from .. import api

    try:
        manifest = api.select(input, output, cfg)
    except (InputError, ValueError, FileNotFoundError) as err:
        _fail(str(err))
    c = manifest["counts"]
    table = Table(title=f"select by {cfg.by}")
    table.add_column("rows"); table.add_column("kept"); table.add_column("kept tokens"); table.add_column("cut-off")
    cut = manifest["cutoff_score"]
    table.add_row(str(c["rows"]), str(c["kept"]), f"{c['kept_tokens']:,}", "-" if cut is None else f"{cut:.4f}")
    console.print(table)
    for reason, count in sorted(manifest["dropped_by_reason"].items(), key=lambda kv: -kv[1]):
        console.print(f"  dropped {count:>6}  {reason}")
    console.print(f"output: {manifest['output']}\ndropped rows: {manifest['dropped']}")
    return manifest


@app.command()
def demo(
    out: Path = typer.Option(Path("ontask-demo"), "-o", "--output", help="Folder for the demo's outputs."),
    cache: Optional[Path] = typer.Option(None, help="Result cache file."),
) -> None:
    """The whole job on the bundled support task, offline: augment (TCIA), score, select, report.

    Builds a small constraint database from bundled decomposed instructions, grows
    instructions from one seed with the embedded SmolLM2 in every role, answers them on
    bundled customer messages, then scores the rows (TSS, TSS++, IFD, perplexity) and
    keeps the better half, and writes report.html.
    """
    from importlib.resources import files

    from ..scoring import ScoreConfig
    from ..selection import SelectConfig
    from ..tcia.config import AugmentConfig
    from .report_cmd import write_report
    from .tcia_cmds import db_build_from, run_augment_cli

    data = Path(str(files("ontask") / "data"))
    _quiet_libraries()
    console.rule("[bold]ontask demo 1/5: constraint database")
    db = db_build_from(data / "demo_constraints.jsonl", out / "db", cache)
    console.rule("[bold]ontask demo 2/5: augment (TCIA)")
    cfg = AugmentConfig(**DEMO_AUGMENT, db=out / "db")
    manifest = run_augment_cli(cfg, out / "augment", seed_text=None, seeds_file=data / "demo_seed.jsonl",
                               inputs_file=data / "demo_inputs.jsonl", input_field=None, cache_path=cache, db_obj=db)
    rows = manifest["outputs"]["rows"]
    if rows < 2:
        _fail(f"augmentation kept {rows} rows, too few to score against each other; see {out / 'augment'}")
    console.rule("[bold]ontask demo 3/5: score")
    scored = out / "scored" / "data.jsonl"
    k = min(4, max(1, _distinct_instructions(Path(manifest["outputs"]["data"])) - 1))
    _run_score(Path(manifest["outputs"]["data"]), scored, ScoreConfig(metrics=["ppl", "ifd", "tss", "tss++"], k=k), cache)
    console.rule("[bold]ontask demo 4/5: select")
    _run_select(scored, out / "selected" / "data.jsonl", SelectConfig(by="tss++", retain=0.5))
    _print_demo_summary(scored)
    console.rule("[bold]ontask demo 5/5: report")
    report = write_report(out, out / "report.html")
    console.print(f"\n[bold green]done.[/] outputs in {out.resolve()}:\n"
                  f"  augment/   data.jsonl, instructions.jsonl, failed.jsonl, run.json (funnel, diversity, on-task)\n"
                  f"  scored/    data.jsonl with tss, tss_pp, ifd, ppl; run.json\n"
                  f"  selected/  data.jsonl (kept rows), dropped.jsonl, select.json\n"
                  f"  report.html  plots and tables of all of it (open it in a browser)")
    console.print(f"report: [bold]{Path(report['output']).resolve()}[/]")


# Small enough for 2 CPU cores in a few minutes. The embedded 135M model cannot judge:
# its expected scores sit near 1.5 whatever it reads, and only ~20% of its next-token
# probability goes to the digits (real judges: > 90%), so the demo records the judges'
# scores but does not filter on them; the defaults (keep >= 4 of 5, digit mass >= 0.5)
# suit real judge models. The bundled seed comes decomposed for the same reason.
DEMO_AUGMENT = dict(hops=2, per_op=2, max_states=16, samples=6, inputs_per_instruction=2, max_refinements=1,
                    compose_max_tokens=192, response_max_tokens=256, min_validity=1.0, min_consistency=1.0,
                    min_choice_mass=0.05, on_task_decompose=False, local_repetition_penalty=1.15)


def _distinct_instructions(path: Path) -> int:
    import json

    return len({json.loads(line)["instruction"] for line in path.read_text(encoding="utf-8").splitlines() if line})


def _print_demo_summary(scored: Path) -> None:
    import json

    rows = [json.loads(line) for line in scored.read_text(encoding="utf-8").splitlines()]
    rows.sort(key=lambda r: -r["tss_pp"])
    table = Table(title="augmented rows by TSS++")
    for col in ("rank", "hop", "tss", "tss++", "ifd", "ppl", "instruction"):
        table.add_column(col)
    shown = list(enumerate(rows))
    for i, r in (shown if len(shown) <= 10 else shown[:5] + shown[-5:]):
        table.add_row(str(i + 1), str(r.get("hop", "")), f"{r['tss']:.3f}", f"{r['tss_pp']:.3f}",
                      f"{r['ifd']:.3f}", f"{r['ppl']:.2f}", r["instruction"][:60])
    Console().print(table)


from .batches_cmd import register as _register_batches  # noqa: E402
from .export_cmd import register as _register_export  # noqa: E402
from .report_cmd import register as _register_report  # noqa: E402  (commands defined after `app`)
from .tcia_cmds import register as _register_tcia  # noqa: E402

_register_tcia(app)
_register_report(app)
_register_export(app)
_register_batches(app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

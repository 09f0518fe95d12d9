"""TCIA commands: `decompose`, `db build`, `augment`, `eval decompose`.

Settings are validated (pydantic) before any model is loaded or token spent; every model
call goes through the result cache, so rerunning an interrupted command resumes it.
"""

from __future__ import annotations


from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import click
import typer
from pydantic import ConfigDict, ValidationError
from rich.console import Console
from rich.table import Table

from ..models.roles import RoleModels, apply_model_options
from ..records import InputError, settings_error
from .config_file import merged
from .progress import stage_progress

db_app = typer.Typer(no_args_is_help=True, help="The constraint database TCIA draws edits from.")
eval_app = typer.Typer(no_args_is_help=True, help="Measure models for a role against gold data.")


def _main():  # late import: main.py registers these commands
    from . import main

    return main


@contextmanager
def _reported() -> Iterator[None]:
    """Errors users can act on become one red line (and exit 2); Ctrl-C says how to resume."""
    try:
        yield
    except KeyboardInterrupt:
        _main()._fail("interrupted; run the same command again to resume (answered calls are cached)", 130)
    except (InputError, ValueError, FileNotFoundError, RuntimeError) as err:
        if isinstance(err, (typer.Exit, click.exceptions.Exit)):
            raise
        _main()._fail(str(err))


class _DecomposerModels(RoleModels):
    """The one model role of decompose, db build and eval decompose, resolved by the same rules
    as the roles of score and augment: --decomposer > --model > embedded, --model-option,
    --base-url where the provider takes one."""

    model_config = ConfigDict(extra="forbid")
    chat_roles = ("decomposer",)
    decomposer: str | None = None
    base_url: str | None = None


def _decomposer_spec(value: str | None, model: str | None, base_url: str | None, options: list[str] | None):
    """The decomposer's spec from its flags, checked before anything loads."""
    flags: dict[str, Any] = {"decomposer": value, "model": model, "base_url": base_url}
    apply_model_options(flags, options, _DecomposerModels.chat_roles)
    try:
        settings = _DecomposerModels(**flags)
    except ValidationError as err:
        raise ValueError(settings_error(err)) from None
    settings.check_models()
    return settings.spec_for("decomposer")


def failed_path(output: Path) -> Path:
    from ..api import failed_path as path

    return path(output)


def register(app: typer.Typer) -> None:
    app.command("decompose", epilog="Examples:\n\n  ontask decompose prompts.jsonl -o decomposed.jsonl\n\n"
                       "  ontask decompose prompts.jsonl -o out/d.jsonl --decomposer openai:gpt-4.1 --base-url http://localhost:8000/v1")(decompose_cmd)
    app.command("augment", epilog="Examples:\n\n  ontask augment --seed 'Summarise the meeting in 3 bullets.' --inputs transcripts.jsonl --db db/ -o run/\n\n"
                                  "  ontask augment --seeds seeds.jsonl --inputs docs.parquet --db db/ -o run/ --responders openai:a,openai:b --base-url URL")(augment_cmd)
    app.add_typer(db_app, name="db")
    app.add_typer(eval_app, name="eval")


def decompose_cmd(
    input: Path = typer.Argument(..., help="Instructions (field instruction/prompt/seed/text, or --field)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output JSONL: each row + is_complex, languages, tasks."),
    decomposer: Optional[str] = typer.Option(None, help="embedded | hf:PATH | openai:MODEL (default: embedded)."),
    base_url: Optional[str] = typer.Option(None, help="Server URL for openai: models."),
    field: Optional[str] = typer.Option(None, help="Field holding the instruction."),
    cache: Optional[Path] = typer.Option(None, help="Result cache file."),
    model: Optional[str] = typer.Option(None, "--model", help="Same as --decomposer (this command has one role)."),
    model_option: Optional[list[str]] = typer.Option(None, "--model-option", help="[decomposer.]OPTION=VALUE, repeatable."),
    limit: Optional[int] = typer.Option(None, min=1, help="Decompose only the first N rows (try a slice first)."),
    sample: Optional[int] = typer.Option(None, min=1, help="Decompose N rows drawn at random (seeded by --seed)."),
    seed: int = typer.Option(0, help="Seed of --sample."),
) -> None:
    """Instruction -> task type, base query and constraints (one structured call per row)."""
    from .. import api

    m = _main()
    with _reported():
        spec = _decomposer_spec(decomposer, model, base_url, model_option)
    if not input.exists():
        m._fail(f"{input}: no such file or folder")
    if limit is not None and sample is not None:
        m._fail("give --limit N or --sample N, not both")
    with _reported(), stage_progress(m.console) as stage:
        _, counts = api.decompose(input, output, spec, field=field, cache_path=cache, tick=stage("decompose", None),
                                  status=m.console.status, limit=limit, sample=sample, seed=seed)
    m.console.print(f"decomposed {counts['decomposed']} of {counts['rows']} rows, {counts['failed']} failed\n"
                    f"output: {output}\nfailures: {failed_path(output)}")


@db_app.command("build", epilog="Examples:\n\n  ontask db build corpus.jsonl -o db/\n\n  ontask db build decomposed.jsonl -o db/ --eps 0.1")
def db_build(
    input: Path = typer.Argument(..., help="Instructions to decompose, or rows already decomposed (task_type, base_query, constraints)."),
    output: Path = typer.Option(..., "-o", "--output", help="Database folder."),
    decomposer: Optional[str] = typer.Option(None, help="Model for rows not yet decomposed (default: embedded)."),
    base_url: Optional[str] = typer.Option(None),
    embedder: str = typer.Option("embedded", help="Sentence embedder: embedded | a sentence-transformers folder."),
    eps: float = typer.Option(0.15, help="DBSCAN eps (cosine distance) for clustering task types."),
    min_samples: int = typer.Option(1, help="DBSCAN min_samples."),
    cache: Optional[Path] = typer.Option(None, help="Result cache file."),
    model: Optional[str] = typer.Option(None, "--model", help="Same as --decomposer (this command has one model role)."),
    model_option: Optional[list[str]] = typer.Option(None, "--model-option", help="[decomposer.]OPTION=VALUE, repeatable."),
) -> None:
    """Build the constraint database: decompose, embed, cluster task types, index constraints."""
    m = _main()
    with _reported():
        spec = _decomposer_spec(decomposer, model, base_url, model_option)
    if not input.exists():
        m._fail(f"{input}: no such file or folder")
    with _reported():
        db_build_from(input, output, cache, spec, None, embedder, eps, min_samples)


def db_build_from(input: Path, output: Path, cache: Path | None, decomposer: Any = None,
                  base_url: str | None = None, embedder: str = "embedded", eps: float = 0.15, min_samples: int = 1):
    """Build and save a database (used by `db build` and the demo); returns it."""
    from .. import api

    m = _main()
    spec = decomposer if decomposer is None or not isinstance(decomposer, str) else _decomposer_spec(decomposer, None, base_url, None)
    with stage_progress(m.console) as stage:
        db, failed = api.build_db(input, output, decomposer=spec, embedder=embedder, eps=eps, min_samples=min_samples,
                                  cache_path=cache, tick=stage("decompose", None), status=m.console.status)
    d = db.describe()
    m.console.print(f"database: {output}  " + ", ".join(f"{k}={d[k]}" for k in d if isinstance(d[k], (int, float, str))))
    if failed:
        m.console.print(f"[yellow]{failed} rows could not be decomposed:[/] {failed_path(output / 'decomposed.jsonl')}")
    return db


def augment_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="Run directory (resumes when it exists)."),
    seed_text: Optional[str] = typer.Option(None, "--seed", help="One seed instruction."),
    seeds: Optional[Path] = typer.Option(None, help="File of seed instructions (optionally decomposed)."),
    inputs: Optional[Path] = typer.Option(None, help="Pool of real inputs of the task."),
    input_field: Optional[str] = typer.Option(None, help="Field holding the input text."),
    db: Optional[Path] = typer.Option(None, help="Constraint database folder (ontask db build)."),
    hops: Optional[int] = typer.Option(None, help="Search depth (default 3)."),
    per_op: Optional[int] = typer.Option(None, help="m: draws per operation per state (default 10)."),
    max_states: Optional[int] = typer.Option(None, help="K: unique states to produce (default 2700)."),
    samples: Optional[int] = typer.Option(None, help="k: states to write (default 2000)."),
    inputs_per_instruction: Optional[int] = typer.Option(None, help="Inputs paired with each instruction (default 5)."),
    decomposer: Optional[str] = typer.Option(None), composer: Optional[str] = typer.Option(None),
    verifier: Optional[str] = typer.Option(None), judge: Optional[str] = typer.Option(None),
    responders: Optional[str] = typer.Option(None, help="Comma list of models."),
    model: Optional[str] = typer.Option(None, "--model", help="The model of every role not given its own flag."),
    model_option: Optional[list[str]] = typer.Option(None, "--model-option", help="ROLE.OPTION=VALUE (or OPTION=VALUE for "
                                                     "every role), repeatable, e.g. judge.base_url=http://host:8000/v1."),
    embedder: Optional[str] = typer.Option(None),
    base_url: Optional[str] = typer.Option(None, help="Server URL for openai: models."),
    concurrency: Optional[int] = typer.Option(None, help="The most in-flight requests per server model (default 64)."),
    batch: Optional[bool] = typer.Option(None, "--batch", help="Every server chat role through the provider's batch "
                                         "API: about half the price, answered within hours; a killed run resumes "
                                         "its batches (list them: ontask batches RUN_DIR)."),
    adaptive: Optional[bool] = typer.Option(None, "--adaptive/--fixed-concurrency",
                                            help="AIMD: halve in-flight requests on 429/503, raise them while calls succeed (default: adaptive)."),
    tokens_per_minute: Optional[int] = typer.Option(None, help="Token budget per server model (prompt + completion)."),
    requests_per_minute: Optional[int] = typer.Option(None, help="Request budget per server model."),
    engine: Optional[str] = typer.Option(None, help="local | ray: local models (embedded, hf:, vllm:) in Ray actor pools (pip install 'ontask[ray]')."),
    ray_address: Optional[str] = typer.Option(None, help="ray: join this cluster (auto, ray://HOST:10001); default: a local Ray."),
    workers: Optional[int] = typer.Option(None, help="ray: actors per local model, one model copy each."),
    judge_mode: Optional[str] = typer.Option(None, help="auto | logprob | text."),
    min_validity: Optional[float] = typer.Option(None), min_consistency: Optional[float] = typer.Option(None),
    min_response_score: Optional[float] = typer.Option(None, help="Floor on the best answer's mean judge score."),
    check: Optional[bool] = typer.Option(None, "--check/--no-check", help="Drop answers that violate a code-checkable constraint "
                                         "(IFEval checkers: length, format, keywords, case, language...) before the judge (default: on)."),
    rng_seed: Optional[int] = typer.Option(None, "--rng-seed", help="Random seed of the search and pairing (default 0)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Use only the first N seed instructions (try a slice first)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Decompose the seeds and search (exact states), print the most "
                                 "calls each role can make, and stop."),
    cache: Optional[Path] = typer.Option(None, help="Result cache file."),
    config: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False, help="YAML settings; flags override."),
) -> None:
    """Grow diverse, on-task (instruction, input, response) rows from seed instructions (TCIA)."""
    from ..tcia.config import AugmentConfig

    m = _main()
    try:
        cfg = AugmentConfig(**_augment_settings(config, dict(
            hops=hops, per_op=per_op, max_states=max_states, samples=samples,
            inputs_per_instruction=inputs_per_instruction, decomposer=decomposer, composer=composer,
            verifier=verifier, judge=judge, responders=responders, embedder=embedder, base_url=base_url,
            concurrency=concurrency, judge_mode=judge_mode, min_validity=min_validity,
            min_consistency=min_consistency, min_response_score=min_response_score, seed=rng_seed, db=db, check=check,
            engine=engine, ray_address=ray_address, workers=workers, model=model, batch=batch),
            model_option=model_option))
        rate = {k: v for k, v in dict(adaptive=adaptive, tokens_per_minute=tokens_per_minute,
                                      requests_per_minute=requests_per_minute).items() if v is not None}
        if rate:
            cfg = AugmentConfig(**{**cfg.model_dump(), "rate": {**cfg.rate.model_dump(), **rate}})
    except (ValueError, ValidationError) as err:
        m._fail(settings_error(err))
    if (seed_text is None) == (seeds is None):
        m._fail("give exactly one of --seed TEXT or --seeds FILE")
    if inputs is None:
        m._fail("--inputs FILE is required: the real inputs of the task to pair instructions with")
    if cfg.db is None:
        m._fail("--db is required: build one with `ontask db build CORPUS -o DB`")
    if dry_run:
        _augment_dry_run(cfg, seed_text=seed_text, seeds_file=seeds, inputs_file=inputs, input_field=input_field,
                         cache_path=cache, limit=limit)
        return
    manifest = run_augment_cli(cfg, output, seed_text=seed_text, seeds_file=seeds, inputs_file=inputs,
                               input_field=input_field, cache_path=cache, limit=limit)
    if manifest["outputs"]["rows"] == 0:
        m._fail("no row was kept: see the funnel above and the reasons in instructions.jsonl / failed.jsonl", 1)


def _augment_dry_run(cfg, *, seed_text: str | None, seeds_file: Path | None, inputs_file: Path,
                     input_field: str | None, cache_path: Path | None, limit: int | None) -> None:
    from .. import api
    from ..tcia.pipeline import Seed
    from ..tcia.sources import read_inputs, read_seeds

    m = _main()
    with _reported():
        seeds = [Seed(seed_text, source="--seed")] if seed_text else read_seeds(seeds_file)[:limit]
        pool = read_inputs(inputs_file, input_field)
        plan = api.plan_augment(cfg, seeds=seeds, inputs=pool, cache_path=cache_path, status=m.console.status)
    table = Table(title="dry run: ontask augment", title_justify="left")
    table.add_column("role")
    table.add_column("model")
    table.add_column("calls at most", justify="right")
    for role, n in plan["calls_at_most"].items():
        table.add_row(role, plan["models"][role], f"{n:,}")
    Console().print(table)
    Console().print(f"seeds: {plan['seeds_usable']} of {plan['seeds']} usable; states explored "
                    f"{plan['states_explored']:,}, sampled {plan['states_sampled']:,}; rows at most "
                    f"{plan['rows_at_most']:,}; judge mode {plan['judge_mode']}. Calls at most: every state composed "
                    "with every refinement, every instruction valid, every answer judged. Tokens, time and cost are "
                    "not estimated for augment: its later prompts hold texts the run has not written yet.")
    for f in plan["seed_failures"]:
        m.console.print(f"[yellow]seed {f['seed']}:[/] {f['reason']}")


def _augment_settings(config: Path | None, flags: dict[str, Any], model_option: list[str] | None) -> dict[str, Any]:
    from ..tcia.config import AugmentConfig

    apply_model_options(flags, model_option, AugmentConfig.chat_roles)
    return merged(config, "augment", flags)


def run_augment_cli(cfg, output: Path, *, seed_text: str | None, seeds_file: Path | None, inputs_file: Path,
                    input_field: str | None, cache_path: Path | None, db_obj: Any = None,
                    limit: int | None = None) -> dict[str, Any]:
    from .. import api
    from ..tcia.pipeline import Seed
    from ..tcia.sources import read_inputs, read_seeds

    m = _main()
    with _reported():
        seeds = [Seed(seed_text, source="--seed")] if seed_text else read_seeds(seeds_file)[:limit]
        pool = read_inputs(inputs_file, input_field)
        with stage_progress(m.console) as stage:
            manifest = api.augment(cfg, output, seeds=seeds, inputs=pool, cache_path=cache_path, db=db_obj,
                                   progress=stage, status=m.console.status)
    _print_funnel(manifest)
    return manifest


def _print_funnel(manifest: dict[str, Any]) -> None:
    m = _main()
    f = manifest["funnel"]
    table = Table(title="augment funnel")
    for col in ("explored", "sampled", "composed", "verified", "unique", "valid", "paired", "answered", "kept"):
        table.add_column(col)
    table.add_row(*(str(f[k]) for k in ("states_explored", "sampled", "composed", "verified", "unique", "valid", "paired", "answered", "kept")))
    m.console.print(table)
    drops = {k: v for k, v in f["drops"].items() if v}
    if drops:
        m.console.print("dropped: " + ", ".join(f"{k} {v}" for k, v in drops.items()))
    div = manifest["diversity"]["valid"] or manifest["diversity"]["verified"]
    if div:
        m.console.print("diversity per hop: " + ", ".join(f"{h}: {'-' if v is None else f'{v:.3f}'}" for h, v in div.items()))
    if manifest.get("on_task"):
        ratios = {h: v["ratio"] for h, v in manifest["on_task"].items()}
        m.console.print("on-task per hop: " + ", ".join(f"{h}: {'-' if r is None else f'{r:.2f}'}" for h, r in ratios.items()))
    o = manifest["outputs"]
    m.console.print(f"data: {o['data']} ({o['rows']} rows)\ninstructions: {o['instructions']}\nfailures: {o['failed']} "
                    f"({manifest['failures']})\nmanifest: {Path(o['data']).parent / 'run.json'}")


@eval_app.command("decompose", epilog="Examples:\n\n  ontask eval decompose ../shared/data/ifeval_dev.jsonl\n\n"
                                      "  ontask eval decompose gold.jsonl --decomposer openai:gpt-4.1 --base-url URL -o eval.json")
def eval_decompose(
    input: Path = typer.Argument(..., help="Gold rows: prompt, instruction_id_list (or n_constraints), base_query."),
    decomposer: Optional[str] = typer.Option(None, help="Model to evaluate (default: embedded)."),
    base_url: Optional[str] = typer.Option(None),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the metrics (and per-row results) as JSON."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N rows."),
    cache: Optional[Path] = typer.Option(None, help="Result cache file."),
    model: Optional[str] = typer.Option(None, "--model", help="Same as --decomposer."),
    model_option: Optional[list[str]] = typer.Option(None, "--model-option", help="[decomposer.]OPTION=VALUE, repeatable."),
) -> None:
    """Score a decomposer against gold decompositions: constraint count accuracy, base-query similarity."""
    from .. import api
    from ..embed import load_embedder
    from ..tcia.corpus import evaluate, iter_decomposed

    m = _main()
    with _reported():
        spec = _decomposer_spec(decomposer, model, base_url, model_option)
    if not input.exists():
        m._fail(f"{input}: no such file or folder")
    m._quiet_libraries()
    with _reported():
        c = api.open_cache(cache)
        with m.console.status(f"loading model {spec}"):
            gen = api.cached_generator(spec, c)
        rows = []
        field = "prompt" if _has_field(input, "prompt") else None
        size = min(64, limit) if limit else 64  # small chunks: --limit stops after the chunk that reaches it
        with stage_progress(m.console) as stage:
            tick = stage("decompose", limit)
            for chunk in iter_decomposed(input, lambda: gen, field=field, tick=tick, chunk_size=size):
                rows += chunk
                if limit and len(rows) >= limit:
                    break
        rows = rows[:limit] if limit else rows
        emb = load_embedder("embedded", cache=c)
        metrics = evaluate(rows, emb.embed, gold_count=_gold_count, gold_base=lambda r: r.get("base_query"))
    metrics["model"] = gen.describe()
    metrics["calls"] = gen.stats.to_json()
    table = Table(title=f"decomposer {spec} on {input.name}")
    table.add_column("metric"); table.add_column("value")
    for k, v in metrics.items():
        if isinstance(v, (int, float)) or v is None:
            table.add_row(k, "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
    m.console.print(table)
    if output:
        from ..io.writers import write_json_atomic

        per_row = [{"line": r.line, "failure": r.failure, "predicted": r.result,
                    "gold_count": _gold_count(r.record), "gold_base_query": r.record.get("base_query")} for r in rows]
        write_json_atomic(output, {"metrics": metrics, "rows": per_row})
        m.console.print(f"written: {output}")


def _gold_count(rec: dict[str, Any]) -> int | None:
    if isinstance(rec.get("n_constraints"), int):
        return rec["n_constraints"]
    ids = rec.get("instruction_id_list")
    return len(ids) if isinstance(ids, list) else None


def _has_field(path: Path, name: str) -> bool:
    from ..io.formats import iter_records

    for chunk in iter_records(path, 1):
        for _, rec in chunk:
            return isinstance(rec, dict) and name in rec
    return False

"""The composition root: settings in; models, cache, embedder and executor wired; the job run.

The CLI's commands are thin layers over these functions (they add the terminal: status
lines, progress bars, tables), and the Python API is built on them too. This is the one
module that knows which executor runs a job (`local` or `ray`): `scoring/` and `tcia/` take
an executor or a model loader and never import `engine/`.

Each function validates what it can before any model loads, opens the result cache (every
model call goes through it, which is what makes a rerun resume), loads each distinct model
once, and returns the run's manifest.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from .cache import ResultCache
from .models import CachedGenerator, ModelSpec, load_generator, load_scorer
from .runs import check_output_name
from .scoring.config import ScoreConfig
from .scoring.pipeline import BudgetReached  # what a run stopped by --max-cost/--max-tokens-spent raises
from .tcia.config import AugmentConfig

Status = Callable[[str], ContextManager[Any]]  # shows "loading X" while a model loads


def _no_status(message: str) -> ContextManager[Any]:
    return contextlib.nullcontext()


def quiet_libraries() -> None:
    """No hub access and no library chatter: ontask never downloads models."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def open_cache(path: str | os.PathLike | None = None) -> ResultCache:
    """The result cache (`path`, else $ONTASK_CACHE_DIR, else ~/.cache/ontask/cache.sqlite)."""
    return ResultCache(Path(path) if path else None)


def cached_generator(spec: ModelSpec | str, cache: ResultCache, **settings: Any) -> CachedGenerator:
    """A generator whose every call goes through the cache."""
    return CachedGenerator(load_generator(spec, **settings), cache)


class LazyGenerator:
    """Loads its model on first use, once per distinct spec (shared through `loaded`): rows that
    carry their decomposition, with constraints quoted verbatim, need no model at all."""

    def __init__(self, spec: ModelSpec, cache: ResultCache, loaded: dict[ModelSpec, CachedGenerator],
                 status: Status = _no_status) -> None:
        self.spec, self.name = spec, str(spec)
        self._cache, self._loaded, self._status = cache, loaded, status

    def __getattr__(self, attr: str) -> Any:
        if self.spec not in self._loaded:
            with self._status(f"loading {self.spec}"):
                self._loaded[self.spec] = cached_generator(self.spec, self._cache)
        return getattr(self._loaded[self.spec], attr)


# -- score ------------------------------------------------------------------------------------
def score(input: str | os.PathLike, output: str | os.PathLike, cfg: ScoreConfig, *,
          cache_path: str | os.PathLike | None = None, progress: Any = None, status: Status = _no_status) -> dict[str, Any]:
    """Score `input` into `output` with `cfg`; returns the manifest (also written as run.json)."""
    from .scoring import run_score

    check_output_name(output)
    _check_score_input(input, cfg)
    cache = open_cache(cache_path)
    scorer, emb, maker = _score_models(cfg, cache, status, local=cfg.engine == "local")  # on Ray, actors load scorers
    return run_score(input, output, cfg, scorer=scorer, cache=cache, embedder=emb, variants=maker,
                     progress=progress, executor=score_executor(cfg))


def estimate(input: str | os.PathLike, cfg: ScoreConfig, *, cache_path: str | os.PathLike | None = None,
             status: Status = _no_status, started: float | None = None) -> dict[str, Any]:
    """What `score` would do (`--dry-run`): rows, passes, tokens, time and cost, from exact
    counts and a short calibration whose passes are committed to the cache for the run.

    `started` (a `time.perf_counter()` value, default now) is when the command began: the time
    to here (imports, model loads) is measured, not guessed, and is part of the estimate."""
    import time

    from .scoring.estimate import estimate_run
    from .scoring.pipeline import Scoring

    started = time.perf_counter() if started is None else started
    _check_score_input(input, cfg)
    cache = open_cache(cache_path)
    scorer, emb, maker = _score_models(cfg, cache, status, local=True)
    setup_s = time.perf_counter() - started
    with status("planning every row and calibrating on a sample"):
        est = estimate_run(Scoring(cfg, scorer, cache, emb, maker), Path(input))
    est["setup_s"] = round(setup_s, 1)
    est["alternatives_s"] = round(est.pop("plan_s"), 1)  # the run builds the same alternatives
    est["estimated_wall_s"] = (round(setup_s + est["alternatives_s"] + est["estimated_score_s"], 1)
                               if est["estimated_score_s"] is not None else None)
    est["scorer"] = scorer.describe()
    return est


def _check_score_input(input: str | os.PathLike, cfg: ScoreConfig) -> None:
    cfg.check_models()  # every role's provider and options, before anything loads
    if not _has_rows(input, cfg.columns):  # (a --limit of 1 or more never empties a non-empty input)
        raise ValueError(f"{input}: no rows to score (the input is empty)")
    quiet_libraries()


def _score_models(cfg: ScoreConfig, cache: ResultCache, status: Status, *, local: bool) -> tuple[Any, Any, Any]:
    """The scorer (when this process scores), the embedder (hard alternatives, Replace
    variants) and the variant maker (`variants` alternatives), each loaded once."""
    scorer = None
    if local:
        with status(f"loading scorer {cfg.scorer}"):
            scorer = load_scorer(cfg.spec_for("scorer"), batch_tokens=cfg.batch_tokens, share_prefix=cfg.share_prefix)
    emb = None
    if "hard" in cfg.alternative_kinds or ("variants" in cfg.alternative_kinds and cfg.db):
        from .embed import load_embedder

        with status(f"loading embedder {cfg.embedder}"):
            emb = load_embedder(cfg.embedder, cache=cache)
    maker = variant_maker(cfg, cache, emb, status) if "variants" in cfg.alternative_kinds else None
    return scorer, emb, maker


def score_executor(cfg: ScoreConfig) -> Any:
    """Where the passes run: this process (None: the pipeline's default) or Ray actors."""
    if cfg.engine == "ray":
        from .engine.ray_score import ray_executor

        return ray_executor(cfg.ray_address)
    return None


def variant_maker(cfg: ScoreConfig, cache: ResultCache, embedder: Any, status: Status = _no_status) -> Any:
    """Models for `--alternatives variants`, each loaded on first use, every call through the cache."""
    from .tcia.database import ConstraintDB
    from .tcia.variants import VariantMaker

    loaded: dict[ModelSpec, CachedGenerator] = {}

    def gen(role: str) -> LazyGenerator:
        return LazyGenerator(cfg.spec_for(role), cache, loaded, status)

    db = ConstraintDB.load(cfg.db, expect_embedder=embedder.name) if cfg.db else None
    return VariantMaker(decomposer=gen("decomposer"), composer=gen("composer"), verifier=gen("verifier"),
                        db=db, embedder=embedder, near_duplicate=cfg.near_duplicate,
                        max_refinements=cfg.variant_refinements, max_tokens=cfg.compose_max_tokens)


# -- select -----------------------------------------------------------------------------------
def select(input: str | os.PathLike, output: str | os.PathLike, cfg: Any) -> dict[str, Any]:
    """Keep the best rows of a scored file under `cfg`'s budget; returns select.json's content."""
    from .selection import run_select

    check_output_name(output)
    if cfg.diversity:
        quiet_libraries()
    return run_select(input, output, cfg)


# -- decompose and the constraint database ------------------------------------------------------
def decompose(input: Path, output: Path, decomposer: ModelSpec | str | None, *, field: str | None = None,
              cache_path: str | os.PathLike | None = None, tick: Any = None, status: Status = _no_status,
              limit: int | None = None, sample: int | None = None,
              seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Decompose `input` into `output` (JSONL) + `<stem>.failed.jsonl` beside it.

    Returns every task found (task_type, base_query, constraints) and the counts; the rows
    stream through to `output` one chunk at a time. The model loads when a row first needs it."""
    from .io.writers import AtomicWriter
    from .tcia.corpus import iter_decomposed

    quiet_libraries()
    cache = open_cache(cache_path)
    loaded: dict[ModelSpec, CachedGenerator] = {}
    model = LazyGenerator(_spec(decomposer), cache, loaded, status)

    tasks: list[dict[str, Any]] = []
    n_rows = n_failed = 0
    with AtomicWriter(output) as w, AtomicWriter(failed_path(output)) as fw:
        for chunk in iter_decomposed(input, lambda: model, field=field, tick=tick, limit=limit, sample=sample, seed=seed):
            ok = [{**d.record, "_line": d.line, **d.result} for d in chunk if d.result is not None]
            bad = [{"file": d.file, "line": d.line, "stage": "decompose", "reason": d.failure} for d in chunk if d.failure]
            w.write(ok)
            fw.write(bad)
            tasks += [t for d in chunk if d.result for t in d.result["tasks"]]
            n_rows += len(chunk)
            n_failed += len(bad)
    counts = {"rows": n_rows, "decomposed": n_rows - n_failed, "failed": n_failed,
              "calls": next(iter(loaded.values())).stats.to_json() if loaded else None}
    return tasks, counts


def failed_path(output: Path) -> Path:
    """Where the failures of `decompose -o OUT` go: OUT's stem + .failed.jsonl, beside it."""
    from .runs import side_file

    return side_file(output, "failed.jsonl")


def build_db(input: Path, output: Path, *, decomposer: ModelSpec | str | None = None, embedder: str = "embedded",
             eps: float = 0.15, min_samples: int = 1, cache_path: str | os.PathLike | None = None, tick: Any = None,
             status: Status = _no_status) -> tuple[Any, int]:
    """Build and save the constraint database: decompose, embed, cluster task types, index
    constraints. Returns the database and how many rows could not be decomposed."""
    from .embed import load_embedder
    from .tcia.database import build_database

    records, counts = decompose(input, output / "decomposed.jsonl", decomposer, cache_path=cache_path, tick=tick,
                                status=status)
    if not records:
        raise ValueError(f"{input}: no row could be decomposed (see {failed_path(output / 'decomposed.jsonl')})")
    emb = load_embedder(embedder, cache=open_cache(cache_path))
    with status(f"embedding and clustering {len(records)} records"):
        db = build_database(records, emb, eps=eps, min_samples=min_samples)
    db.save(output)
    return db, counts["failed"]


# -- augment ----------------------------------------------------------------------------------
def build_roles(cfg: AugmentConfig, cache: ResultCache) -> Any:
    """One loaded model per distinct spec, one cached view per role; local models in Ray actor
    pools with `--engine ray` (a Ray session must be open: see `augment`)."""
    from .tcia.pipeline import Roles, local_loader

    if cfg.engine == "ray":
        from .engine.ray_generate import ray_loader

        return Roles(cfg, cache, loader=ray_loader(cfg, local_loader(cfg)))
    return Roles(cfg, cache)


@contextlib.contextmanager
def executor_session(cfg: AugmentConfig | ScoreConfig) -> Iterator[None]:
    """The executor's lifetime: a Ray session (local or joined) for `--engine ray`, else nothing."""
    if cfg.engine == "ray":
        from .engine.ray_runtime import ray_session

        with ray_session(cfg.ray_address):
            yield
    else:
        yield


def augment(cfg: AugmentConfig, output: str | os.PathLike, *, seeds: list[Any], inputs: list[str],
            cache_path: str | os.PathLike | None = None, db: Any = None, progress: Any = None,
            status: Status = _no_status) -> dict[str, Any]:
    """Run TCIA's six steps from `seeds` over the input pool `inputs` into the run folder `output`."""
    from .tcia.pipeline import run_augment

    cache, emb, db = _augment_setup(cfg, cache_path, db, status)
    with executor_session(cfg):
        roles = _augment_roles(cfg, cache, status)
        return run_augment(seeds, inputs, cfg, output, db=db, embedder=emb, roles=roles, progress=progress)


def plan_augment(cfg: AugmentConfig, *, seeds: list[Any], inputs: list[str], cache_path: str | os.PathLike | None = None,
                 db: Any = None, status: Status = _no_status) -> dict[str, Any]:
    """What `augment` will do (`--dry-run`): exact states explored and sampled, and the most
    calls per role (see `tcia.pipeline.plan_augment`); writes nothing but cache entries."""
    from .tcia.pipeline import plan_augment as plan

    cache, emb, db = _augment_setup(cfg, cache_path, db, status)
    roles = _augment_roles(cfg.model_copy(update={"engine": "local"}), cache, status)  # no Ray for a plan
    with status("decomposing the seeds and searching"):
        return plan(seeds, inputs, cfg, db=db, embedder=emb, roles=roles)


def _augment_setup(cfg: AugmentConfig, cache_path: str | os.PathLike | None, db: Any,
                   status: Status) -> tuple[ResultCache, Any, Any]:
    """Settings checked before anything loads, then the cache, the embedder and the database."""
    from .embed import load_embedder
    from .tcia.database import ConstraintDB

    cfg.check_models()  # every role's provider and options, before anything loads
    quiet_libraries()
    cache = open_cache(cache_path)
    with status(f"loading embedder {cfg.embedder}"):
        emb = load_embedder(cfg.embedder, cache=cache)
    return cache, emb, db or ConstraintDB.load(cfg.db, expect_embedder=emb.name)


def _augment_roles(cfg: AugmentConfig, cache: ResultCache, status: Status) -> Any:
    with status("loading models " + ", ".join(sorted({str(s) for s in cfg.roles().values()}))):
        return build_roles(cfg, cache)


def count_rows(path: str | os.PathLike, cfg: ScoreConfig) -> int | None:
    """Rows a score run will read, for a progress bar's total (a cheap extra read; None when
    the input cannot be read: the run itself reports why, with file and line)."""
    try:
        return sum(len(c) for c in cfg.rows(Path(path)))
    except Exception:
        return None


def _has_rows(path: str | os.PathLike, columns: Any) -> bool:
    """Whether the input holds at least one row (read lazily: stops at the first chunk)."""
    from .io import read_examples

    for chunk in read_examples(Path(path), columns):
        if chunk:
            return True
    return False


def _spec(value: ModelSpec | str | None) -> ModelSpec:
    from .models import parse_spec

    return parse_spec(value or "embedded")


def run_batches_of(run_dir: str | os.PathLike, *, refresh: bool = False, cancel: str | None = None,
                   api_key: str | None = None) -> list[dict[str, Any]]:
    """The provider batches a run recorded (`RUN_DIR/batches.jsonl`), each with its last known
    state; `refresh` asks each provider for the current state, `cancel` (a batch id or "all")
    cancels batches that have not ended. The key comes from `api_key` or the environment."""
    from .models.openai.batch import TERMINAL, BatchLog, batch_client, batch_state
    from .models.transport.endpoint import resolve_api_key, run_sync

    path = Path(run_dir) / "batches.jsonl" if Path(run_dir).is_dir() else Path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no batch log (only runs with batch roles write one)")
    log = BatchLog(path)
    records = list(log.batches().values())
    wanted = [r for r in records if cancel in ("all", r["batch_id"]) and r["status"] not in TERMINAL] if cancel else []
    if cancel and cancel != "all" and not any(r["batch_id"] == cancel for r in records):
        raise ValueError(f"batch {cancel} is not in {path}")

    async def talk() -> None:
        for rec in records:
            if not (refresh or rec in wanted) or not rec.get("provider"):
                continue
            client = batch_client(rec["provider"], resolve_api_key(api_key))
            async with client.session() as http:
                batch = await (client.cancel(http, rec["batch_id"]) if rec in wanted else
                               client.retrieve(http, rec["batch_id"]))
            state = batch_state(batch)
            log.append({"event": "state", "batch_id": rec["batch_id"], **state})
            rec.update(state)

    if refresh or wanted:
        run_sync(talk)
    return records

"""The Python API: data in as a path, a list of dicts, a pandas DataFrame or a Hugging Face
`datasets.Dataset`; rows out as a `datasets.Dataset`, with the run's manifest and failures.

    import ontask
    scored = ontask.score(rows, metrics=["ppl", "ifd", "tss"], k=4)    # rows: list of dicts, DataFrame, Dataset, path
    top = ontask.select(scored, by="tss", retain=0.5)
    top.dataset.to_json("top.jsonl")

The functions are the CLI's own jobs (`ontask.api`): the same settings (keyword arguments
are the settings of `ScoreConfig` / `SelectConfig`, validated before any model loads), the
same cache and resume, the same run.json and failure records. In-memory data is written
to a folder the result owns (removed with it) unless `output=` names a file to keep.
Progress shows as a tqdm bar, which renders in a terminal and in a notebook.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import api
from .records import settings_error
from .scoring.config import ScoreConfig
from .selection import SelectConfig


@dataclass
class Result:
    """What a run gives back: its rows, its manifest (run.json's content), its failures (each
    with file, line and reason) and where its files are."""

    dataset: Any  # datasets.Dataset
    manifest: dict[str, Any]
    failures: list[dict[str, Any]]
    output: Path
    _workdir: Any = field(default=None, repr=False)  # a TemporaryDirectory the result owns

    def __len__(self) -> int:
        return len(self.dataset)


def score(data: Any, *, output: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
          progress: bool = True, **settings: Any) -> Result:
    """Score every row (TSS, TSS++, IFD, perplexity): `settings` are `ScoreConfig`'s
    (metrics, k, alternatives, scorer, model, models, ...)."""
    cfg = _settings(ScoreConfig, settings)
    work = tempfile.TemporaryDirectory(prefix="ontask-")
    source = _as_path(data, Path(work.name))
    out = Path(output) if output else Path(work.name) / "scored.jsonl"
    with _bar(progress, api.count_rows(source, cfg), "score") as update:
        manifest = api.score(source, out, cfg, cache_path=cache, progress=update)
    return _result(manifest, work)


def select(data: Any, *, output: str | os.PathLike | None = None, **settings: Any) -> Result:
    """Keep the best rows under a budget: `settings` are `SelectConfig`'s (by, retain,
    max_tokens, ifd_max, ...). `data` may be a `Result` of `score`."""
    cfg = _settings(SelectConfig, settings)
    work = tempfile.TemporaryDirectory(prefix="ontask-")
    source = _as_path(data, Path(work.name))
    out = Path(output) if output else Path(work.name) / "selected.jsonl"
    manifest = api.select(source, out, cfg)
    return _result(manifest, work, failures_key="dropped")


def estimate(data: Any, *, cache: str | os.PathLike | None = None, **settings: Any) -> dict[str, Any]:
    """What `score(data, **settings)` will do, before it does it (the CLI's `--dry-run`):
    rows, passes, tokens, estimated seconds (a short calibration on the model, whose passes
    are cached for the run) and cost when the scorer has a price."""
    cfg = _settings(ScoreConfig, settings)
    with tempfile.TemporaryDirectory(prefix="ontask-") as work:
        return api.estimate(_as_path(data, Path(work)), cfg, cache_path=cache)


def decompose(data: Any, *, output: str | os.PathLike | None = None, decomposer: str | None = None,
              field: str | None = None, cache: str | os.PathLike | None = None) -> Result:
    """Split each instruction into task type, base query and constraints (TCIA's first step)."""
    work = tempfile.TemporaryDirectory(prefix="ontask-")
    source = _as_path(data, Path(work.name))
    out = Path(output) if output else Path(work.name) / "decomposed.jsonl"
    _, counts = api.decompose(source, out, decomposer, field=field, cache_path=cache)
    manifest = {"command": "decompose", "input": str(source), "output": str(out),
                "failed": str(api.failed_path(out)), "counts": counts}
    return _result(manifest, work)


def augment(seeds: Any, inputs: Any, *, output: str | os.PathLike, db: str | os.PathLike,
            cache: str | os.PathLike | None = None, input_field: str | None = None, **settings: Any) -> Result:
    """Grow on-task rows from seed instructions (TCIA): `seeds` is one instruction, a list of
    them (or of decomposed rows) or a file; `inputs` the task's real inputs (texts, rows or a
    file); `output` the run folder (it resumes when it exists); `settings` are
    `AugmentConfig`'s (hops, samples, composer, judge, responders, ...)."""
    from .tcia.config import AugmentConfig
    from .tcia.pipeline import Seed
    from .tcia.sources import read_inputs, read_seeds

    cfg = _settings(AugmentConfig, {**settings, "db": str(db)})
    with tempfile.TemporaryDirectory(prefix="ontask-") as work:
        if isinstance(seeds, str) and not Path(seeds).exists():
            seed_list = [Seed(seeds, source="argument")]
        else:
            seed_rows = [{"instruction": s} if isinstance(s, str) else s for s in seeds] \
                if isinstance(seeds, (list, tuple)) else seeds
            seed_list = read_seeds(_as_path(seed_rows, Path(work), "seeds.jsonl"))
        input_rows = [{"input": t} if isinstance(t, str) else t for t in inputs] \
            if isinstance(inputs, (list, tuple)) else inputs
        pool = read_inputs(_as_path(input_rows, Path(work), "inputs.jsonl"), input_field)
    manifest = api.augment(cfg, output, seeds=seed_list, inputs=pool, cache_path=cache)
    return _result({**manifest, "output": manifest["outputs"]["data"], "failed": manifest["outputs"]["failed"]}, None)


def report(source: Any, output: str | os.PathLike, **options: Any) -> Path:
    """One offline HTML page of a run's plots and tables; `source` is a run folder, a data
    file or a `Result`. Returns the page's path."""
    from .report import ReportOptions, build_report

    src = source.output if isinstance(source, Result) else Path(source)
    summary = build_report(src, Path(output), _settings(ReportOptions, options))
    return Path(summary["output"])


def export(data: Any, output: str | os.PathLike, *, format: str = "messages", system: str | None = None,
           keep: Any = None) -> dict[str, Any]:
    """Rows in a layout trainers read (messages | sharegpt | alpaca), with a dataset card;
    `data` is a file or a `Result` (a selection's card then shows its whole recipe)."""
    from .export import export as run_export

    with tempfile.TemporaryDirectory(prefix="ontask-") as work:
        return run_export(_as_path(data, Path(work)), output, format=format, system=system, keep=keep)


# -- helpers ------------------------------------------------------------------------------------
def _settings(cls: type, settings: dict[str, Any]) -> Any:
    try:
        return cls(**settings)
    except ValidationError as err:
        raise ValueError(settings_error(err)) from None


def _as_path(data: Any, folder: Path, name: str = "input.jsonl") -> Path:
    """A file the readers take: a path as it is; rows written as JSONL into `folder`."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        return path
    if isinstance(data, Result):
        return data.output
    rows = _rows(data)
    if not rows:
        raise ValueError("no rows given: the data is empty")
    path = folder / name
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"row {i}: expected a mapping of fields, got {type(row).__name__}")
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return path


def _rows(data: Any) -> list[Any]:
    if hasattr(data, "to_list") and hasattr(data, "features"):  # datasets.Dataset
        return data.to_list()
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas.DataFrame
        return data.to_dict(orient="records")
    if isinstance(data, (list, tuple)):
        return list(data)
    raise TypeError(f"data must be a path, a list of dicts, a pandas DataFrame or a datasets.Dataset, "
                    f"not {type(data).__name__}")


class _bar:
    """A tqdm progress bar (terminal or notebook) fed by the pipeline's `update(rows, passes, tokens)`:
    it moves at every forward batch, in rows (a finished row) with passes and tokens beside."""

    def __init__(self, enabled: bool, total: int | None, label: str) -> None:
        self.enabled, self.total, self.label, self.bar = enabled, total, label, None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, desc=self.label, unit="row")

        passes = 0

        def update(rows: int, passes_delta: int, tokens: int) -> None:
            nonlocal passes
            passes += passes_delta
            self.bar.set_postfix(passes=f"{passes:,}", tokens=f"{tokens:,}", refresh=False)
            self.bar.update(rows)

        return update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _result(manifest: dict[str, Any], work: Any, failures_key: str = "failed") -> Result:
    import datasets

    out = Path(manifest["output"])
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines() if x.strip()] \
        if out.suffix != ".parquet" else datasets.Dataset.from_parquet(str(out)).to_list()
    failures_path = manifest.get(failures_key)
    failures = ([json.loads(x) for x in Path(failures_path).read_text(encoding="utf-8").splitlines() if x.strip()]
                if failures_path and Path(failures_path).exists() else [])
    return Result(datasets.Dataset.from_list(rows), manifest, failures, out, work)

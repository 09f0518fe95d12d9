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


# -- helpers ------------------------------------------------------------------------------------
def _settings(cls: type, settings: dict[str, Any]) -> Any:
    try:
        return cls(**settings)
    except ValidationError as err:
        raise ValueError(settings_error(err)) from None


def _as_path(data: Any, folder: Path) -> Path:
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
    path = folder / "input.jsonl"
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

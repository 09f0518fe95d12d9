"""`export()`: read any file ontask reads, write it in a trainer's layout, with a dataset card.

The rows stream through: read in chunks by `ontask.io.read_examples`, converted by
`formats.to_row`, written by `AtomicWriter` (`.jsonl`, `.parquet`), so a large file never
sits in memory and a failed export leaves no half-written file. A folder output becomes a
Hugging Face dataset (`save_to_disk`): the rows go to a temporary Parquet file first, which
`datasets` converts to Arrow; the finished folder, card included, replaces the target in one
rename. Rows that cannot be read are not exported; they are counted, by reason, in the card.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import AtomicWriter, parse_columns, read_examples, write_text_atomic
from ..records import Example, Failure, InputError
from ..runs import check_output_name, side_file
from .card import MAX_SKIPPED_LISTED, CardInfo, render_card
from .formats import check_format, check_keep, to_row
from .recipe import find_recipe

# Files `save_to_disk` writes: a folder holding one is a dataset, read or replaced as one.
_DATASET_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")
CHUNK_ROWS = 1024


@dataclass
class _Tally:
    """What one export read and wrote, for the return value and the card."""

    rows_read: int = 0
    exported: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_SKIPPED_LISTED
    by_reason: Counter = field(default_factory=Counter)
    columns: dict[str, None] = field(default_factory=dict)  # input columns, in order of appearance

    def skip(self, failure: Failure) -> None:
        self.by_reason[failure.reason if failure.field is None else f"{failure.field}: {failure.reason}"] += 1
        if len(self.skipped) < MAX_SKIPPED_LISTED:
            self.skipped.append(failure.to_json())


def export(
    input: str | os.PathLike,
    output: str | os.PathLike,
    format: str = "messages",
    system: str | None = None,
    keep: str | Sequence[str] | None = None,
    *,
    columns: str | dict[str, str] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Export `input` to `output` in `format` (messages | sharegpt | alpaca), with a dataset card.

    `input`: any file ontask reads, an ontask output, a run folder (its data.jsonl) or a saved
    Hugging Face dataset. `output`: `.jsonl`, `.parquet`, or a folder path without suffix (a
    `save_to_disk` dataset). `system` replaces each row's own system prompt ("" drops it);
    `keep` names input columns carried into each row. Settings are checked before anything
    is read; raises ValueError / InputError (naming the file) when nothing can be exported.
    Returns the paths, counts and the recipe's commands.
    """
    started = time.perf_counter()
    fmt = check_format(format)
    out = Path(output)
    check_output_name(out, (".jsonl", ".parquet"))  # nested turns have no CSV form trainers read
    keep_cols = check_keep(fmt, _names(keep))
    column_map = parse_columns(columns) if isinstance(columns, str) else columns
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    src = resolve_input(Path(input))
    as_folder = out.is_dir() or not out.suffix
    _check_target(src, out, as_folder)
    recipe = find_recipe(src)
    tally = _Tally()
    rows = _rows(read_examples(src, column_map, chunk_size=CHUNK_ROWS, limit=limit), fmt, system, keep_cols, tally, src)
    if as_folder:
        card_path = out / "README.md"
        data_files = "data-*.arrow"
    else:
        card_path = side_file(out, "README.md")
        data_files = out.name
    info = CardInfo(format=fmt, data_files=data_files, data_name=out.name, folder=as_folder, source=str(src),
                    exported=0, rows_read=0, keep=keep_cols, system=system, recipe=recipe,
                    export_cli=_export_cli(input, out, fmt, system, keep_cols, columns, limit))
    if as_folder:
        _write_folder(out, rows, tally, src, info)
    else:
        with AtomicWriter(out) as writer:
            for chunk in rows:
                writer.write(chunk)
            _check_rows(tally, src)  # raised inside the block: the writer leaves no file
        write_text_atomic(card_path, render_card(_filled(info, tally)))
    return {
        "input": str(src), "output": str(out), "card": str(card_path), "format": fmt,
        "counts": {"rows_read": tally.rows_read, "exported": tally.exported, "skipped": tally.rows_read - tally.exported},
        "skipped_by_reason": dict(tally.by_reason), "recipe": recipe.commands(),
        "seconds": round(time.perf_counter() - started, 3),
    }


def resolve_input(path: Path) -> Path:
    """The data to export: a file, a saved dataset folder, or a run folder's data.jsonl."""
    if path.is_dir():
        if any((path / marker).is_file() for marker in _DATASET_MARKERS):
            return path
        if (path / "data.jsonl").is_file():
            return path / "data.jsonl"
        raise InputError(str(path), "a folder to export must be an ontask run folder (with data.jsonl) "
                         "or a Hugging Face dataset saved with save_to_disk")
    if not path.exists():
        raise InputError(str(path), "no such file or folder")
    return path


def _names(keep: str | Sequence[str] | None) -> list[str]:
    """--keep as a list: `"a,b"` or `["a", "b"]`."""
    if keep is None:
        return []
    parts = keep.split(",") if isinstance(keep, str) else list(keep)
    names = [str(p).strip() for p in parts]
    if any(not n for n in names):
        raise ValueError(f"--keep: an empty column name in {keep!r}; give names separated by commas")
    return names


def _check_target(src: Path, out: Path, as_folder: bool) -> None:
    """Refuse, before reading, an output that would overwrite the input or something not ours."""
    if out.exists() and out.resolve() == src.resolve():
        raise ValueError(f"{out}: this is the input; write the export to another file")
    if as_folder and out.exists():
        if not out.is_dir():
            raise ValueError(f"{out}: exists and is not a folder; name the output .jsonl or .parquet, or a new folder")
        if any(out.iterdir()) and not any((out / m).is_file() for m in _DATASET_MARKERS):
            raise ValueError(f"{out}: a folder that is not a saved dataset is in the way; give a new folder")


def _rows(chunks: Iterator[list[Example | Failure]], fmt: str, system: str | None, keep: list[str],
          tally: _Tally, src: Path) -> Iterator[list[dict[str, Any]]]:
    """Chunks of exported rows; failures are tallied. The first row checks the --keep names,
    so a typo is an error naming the column rather than a column of None."""
    checked = False
    for chunk in chunks:
        out: list[dict[str, Any]] = []
        for item in chunk:
            tally.rows_read += 1
            if isinstance(item, Failure):
                tally.skip(item)
                continue
            if not checked:
                _check_keep_present(item, keep, src)
                checked = True
            tally.columns.update(dict.fromkeys(item.fields))
            out.append(to_row(item, fmt, system, keep))
        tally.exported += len(out)
        if out:
            yield out


def _check_keep_present(example: Example, keep: list[str], src: Path) -> None:
    missing = [name for name in keep if name not in example.fields]
    if missing:
        found = ", ".join(sorted(map(str, example.fields))) or "(none)"
        raise InputError(str(src), f"--keep: column {missing[0]!r} not found in the first row; keys found: {found}")


def _check_rows(tally: _Tally, src: Path) -> None:
    """Nothing to export is an error, never an empty file a trainer would fail on later."""
    if tally.exported:
        return
    if not tally.rows_read:
        raise InputError(str(src), "no rows to export: the input holds no rows")
    first = tally.skipped[0]
    raise InputError(str(src), f"no rows to export: all {tally.rows_read} rows could not be read "
                     f"(first, line {first['line']}: {first['reason']})")


def _filled(info: CardInfo, tally: _Tally) -> CardInfo:
    info.exported, info.rows_read = tally.exported, tally.rows_read
    info.skipped, info.skipped_by_reason = tally.skipped, dict(tally.by_reason.most_common())
    info.columns = list(tally.columns)
    return info


def _write_folder(out: Path, rows: Iterator[list[dict[str, Any]]], tally: _Tally, src: Path, info: CardInfo) -> None:
    """A `save_to_disk` dataset with its card, built beside `out` and renamed into place."""
    import datasets

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        staged = work / "rows.parquet"
        with AtomicWriter(staged) as writer:
            for chunk in rows:
                writer.write(chunk)
            _check_rows(tally, src)
        built = work / out.name
        with _quiet_datasets():
            ds = datasets.Dataset.from_parquet(str(staged), cache_dir=str(work / "cache"))
            ds.save_to_disk(str(built))
            del ds  # its Arrow cache is memory-mapped from `work`
        write_text_atomic(built / "README.md", render_card(_filled(info, tally)))
        _replace_folder(built, out, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _replace_folder(built: Path, out: Path, work: Path) -> None:
    """Move `built` onto `out`; an earlier export there is moved aside first, then deleted."""
    if out.exists():
        out.rename(work / "previous")
    built.rename(out)


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars for a conversion the user did not ask about; restored after."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _export_cli(input: Any, out: Path, fmt: str, system: str | None, keep: list[str], columns: Any,
                limit: int | None) -> str:
    """This export as a command line, the recipe's last step."""
    parts = ["ontask export", shlex.quote(str(input)), "-o", shlex.quote(str(out)), "--format", fmt]
    if system is not None:
        parts += ["--system", shlex.quote(system)]
    if keep:
        parts += ["--keep", shlex.quote(",".join(keep))]
    if columns:
        spec = columns if isinstance(columns, str) else ",".join(f"{k}={v}" for k, v in columns.items())
        parts += ["--columns", shlex.quote(spec)]
    if limit is not None:
        parts += ["--limit", str(limit)]
    return " ".join(parts)

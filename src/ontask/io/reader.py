"""Read a user's file as a stream of `Example`s and `Failure`s, chunk by chunk.

This joins the format readers (`formats`) and the layouts (`layouts`). The layout is
decided once per file, from its first record that is an object, and then applied to
every row: a file is one dataset with one layout, and a later row that does not fit is a
`Failure` for that row (naming the missing field), never a crash and never a guess at a
different layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ontask.io.formats import iter_records
from ontask.io.layouts import COLUMNS, Row, check_columns, detect_layout, to_examples
from ontask.io.slicing import sliced
from ontask.records import Failure


def read_examples(
    path: str | Path,
    columns: dict[str, str] | None = None,
    chunk_size: int = 1024,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> Iterator[list[Row]]:
    """Yield lists of Examples and Failures, in file order, one list per chunk of rows.

    `limit`: only the first `limit` rows (Examples and Failures alike; a Self-Instruct
    record's instances count one each), so a slice of a large file can be tried first.
    `sample`: `sample` rows drawn at random (seeded by `seed`) from the whole file, still in
    file order: a slice that looks like the file (an extra counting read of the file).

    `columns` (from `parse_columns`) names the instruction/input/output columns and
    skips layout detection. A Self-Instruct row expands to one Example per instance, so
    a chunk can hold more than `chunk_size` items. Raises `InputError` if the file cannot
    be read at all, or if its first record fits no layout (or lacks a named column).
    """
    if limit is not None or sample is not None:
        yield from sliced(lambda: read_examples(path, columns, chunk_size), limit, sample, seed)
        return
    file = str(path)
    layout: str | None = None  # decided by the first object record
    for records in iter_records(path, chunk_size):
        rows: list[Row] = []
        for loc, record in records:
            if isinstance(record, Failure):
                rows.append(record)
                continue
            if layout is None:
                layout = _decide_layout(record, columns, file)
            rows.extend(to_examples(loc, record, layout, columns))
        yield rows


def _decide_layout(record: dict[str, Any], columns: dict[str, str] | None, file: str) -> str:
    """The file's layout, from its first object record; raises InputError if none fits."""
    if columns is not None:
        check_columns(record, columns, file)
        return COLUMNS
    return detect_layout(record, file)


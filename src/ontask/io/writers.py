"""Writers for results, failures and manifests that never leave a half-written file.

Outputs are written atomically: rows go to a temporary file beside the target, which
replaces the target only when everything was written (`os.replace` is atomic on one
filesystem). A crash, Ctrl-C or exception therefore leaves either the old file or the
new one, never a truncated mix. Logs and `failed.jsonl` are append-only instead and
flushed after every write, so that what was recorded before a `kill -9` is kept.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import numpy as np


def json_default(value: Any) -> Any:
    """`json.dumps` hook for values the json module cannot write.

    numpy scalars and arrays become Python numbers and lists (scores are often numpy
    floats), dates and times become ISO 8601 strings, and anything else its `str()`:
    an output row is never dropped because one value has an unusual type.
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def to_json_line(row: dict[str, Any]) -> str:
    """One JSONL line (with its newline), keeping non-ASCII text readable."""
    return json.dumps(row, ensure_ascii=False, default=json_default) + "\n"


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: on POSIX the directory entry needs its own fsync."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _csv_cell(value: Any) -> Any:
    """A CSV cell: text and numbers as they are, lists and objects as JSON, null as empty."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _temp_path(path: Path) -> Path:
    """The temporary file beside `path` (same directory, so os.replace stays atomic)."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


class AtomicWriter:
    """Write chunks of dict rows to `path`, which appears only on a clean exit.

    JSONL by default; Parquet when `path` ends in `.parquet`, with the schema taken from
    the first chunk and later chunks cast to it; CSV when it ends in `.csv` (rows are spooled
    as JSON lines and converted at the end, so the header is every column any row has;
    lists and objects are written as JSON text). On an exception the temporary file is
    deleted and an existing `path` is left untouched. Use as a context manager:

        with AtomicWriter("out.jsonl") as out:
            out.write(rows)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.temp_path = _temp_path(self.path)
        self.rows_written = 0
        self._parquet = self.path.suffix.lower() == ".parquet"
        self._text: TextIO | None = None
        self._parquet_writer: Any = None  # pyarrow.parquet.ParquetWriter, opened lazily
        self._schema: Any = None  # pyarrow.Schema, set by the first chunk

    def __enter__(self) -> AtomicWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._parquet:
            self._text = self.temp_path.open("w", encoding="utf-8")
        return self

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append a chunk of rows to the temporary file."""
        if not rows:
            return
        if self._parquet:
            self._write_parquet(rows)
        else:
            if self._text is None:
                raise RuntimeError("AtomicWriter.write called outside its `with` block")
            self._text.write("".join(to_json_line(row) for row in rows))
        self.rows_written += len(rows)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._commit()
        else:
            self._abort()

    def _commit(self) -> None:
        """Flush and fsync the temporary file, then move it onto the target."""
        if self._parquet:
            self._close_parquet()
        elif self._text is not None:
            self._text.flush()
            os.fsync(self._text.fileno())
            self._text.close()
        if self.path.suffix.lower() == ".csv":
            self._jsonl_to_csv()
        os.replace(self.temp_path, self.path)
        _fsync_dir(self.path.parent)

    def _jsonl_to_csv(self) -> None:
        """Rewrite the spooled JSON lines as CSV in place of the temporary file (two streaming reads)."""
        import csv

        header: dict[str, None] = {}
        with self.temp_path.open(encoding="utf-8") as f:
            for line in f:
                header.update(dict.fromkeys(json.loads(line)))
        spool = self.temp_path.with_name(self.temp_path.name + ".jsonl")
        os.replace(self.temp_path, spool)
        try:
            with spool.open(encoding="utf-8") as f, self.temp_path.open("w", encoding="utf-8", newline="") as out:
                writer = csv.DictWriter(out, fieldnames=list(header))
                writer.writeheader()
                for line in f:
                    writer.writerow({k: _csv_cell(v) for k, v in json.loads(line).items()})
                out.flush()
                os.fsync(out.fileno())
        finally:
            spool.unlink(missing_ok=True)

    def _abort(self) -> None:
        """Close and delete the temporary file; the target is not touched."""
        try:
            if self._text is not None:
                self._text.close()
            if self._parquet_writer is not None:
                self._parquet_writer.close()
        finally:
            self.temp_path.unlink(missing_ok=True)

    # --- Parquet -----------------------------------------------------------------------

    def _write_parquet(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow.parquet as pq

        table = _table_from_rows(rows, self.path)
        if self._parquet_writer is None:
            self._schema = table.schema
            self._parquet_writer = pq.ParquetWriter(self.temp_path, self._schema)
        else:
            table = _cast_to_schema(table, self._schema, self.path)
        self._parquet_writer.write_table(table)

    def _close_parquet(self) -> None:
        """Close the writer; with no rows at all, still write a valid (empty) file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._parquet_writer is None:
            pq.write_table(pa.table({}), self.temp_path)
        else:
            self._parquet_writer.close()
        with self.temp_path.open("rb") as f:
            os.fsync(f.fileno())


def _table_from_rows(rows: list[dict[str, Any]], path: Path) -> Any:
    """An Arrow table with every key of every row (pyarrow's from_pylist only looks at
    the first row's keys); a column whose values have no common type is named."""
    import pyarrow as pa

    names = list(dict.fromkeys(name for row in rows for name in row))
    arrays = []
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"{path}: column {name!r} cannot be written to Parquet: {e}") from e
    return pa.Table.from_arrays(arrays, names=names)


def _cast_to_schema(table: Any, schema: Any, path: Path) -> Any:
    """Cast a later chunk to the schema of the first, naming the column that cannot be.

    Columns missing from this chunk are filled with nulls; a column that the first chunk
    did not have cannot be added to a Parquet file that is already being written.
    """
    import pyarrow as pa

    extra = [name for name in table.column_names if name not in schema.names]
    if extra:
        raise ValueError(
            f"{path}: column {extra[0]!r} is not in the schema set by the first chunk "
            f"({', '.join(schema.names)})"
        )
    columns = []
    for schema_field in schema:
        if schema_field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, type=schema_field.type))
            continue
        column = table.column(schema_field.name)
        try:
            columns.append(column.cast(schema_field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise ValueError(
                f"{path}: column {schema_field.name!r} has type {column.type} in this chunk "
                f"but {schema_field.type} in the first chunk, and cannot be converted: {e}"
            ) from e
    return pa.Table.from_arrays(columns, schema=schema)


class JsonlAppender:
    """Append-only JSONL writer, flushed after every write (failed.jsonl, logs).

    Creates the parent directories. If an earlier process was killed mid-line, the next
    record starts on a fresh line rather than being glued onto the torn one.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = _ends_without_newline(self.path)
        self._file: TextIO = self.path.open("a", encoding="utf-8")
        if needs_newline:
            self._file.write("\n")
            self._file.flush()

    def write(self, row: dict[str, Any]) -> None:
        """Append one row and flush it to the operating system."""
        self._file.write(to_json_line(row))
        self._file.flush()

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        """Append several rows with one flush."""
        self._file.write("".join(to_json_line(row) for row in rows))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _ends_without_newline(path: Path) -> bool:
    """True if `path` exists, is not empty, and its last byte is not a newline."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically (manifests such as run.json)."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=json_default) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically: a reader sees the old file or the whole new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(target)
    try:
        with temp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)

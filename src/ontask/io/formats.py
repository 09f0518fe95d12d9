"""Streaming readers that turn an input file into raw records, chunk by chunk.

Each reader yields `(Location, record)` pairs, where a record is the row as a plain
`dict`, or a `Failure` when that one row could not be decoded (a bad byte, a malformed
JSON line). Row problems never stop the file: the rows around a bad one are still read.
Only problems that make the whole file unusable raise `InputError`.

Memory must not grow with the size of the file (inputs can be many gigabytes), so every
reader streams: JSON Lines line by line, JSON arrays with `ijson`, Parquet and Hugging
Face datasets batch by batch, CSV row by row. The only exception is the JSON fallback for
a top-level object wrapping a list (`{"data": [...]}`), which is loaded whole.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ontask.records import Failure, InputError, Location

Record = dict[str, Any] | Failure
LocatedRecord = tuple[Location, Record]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
SUPPORTED = (
    "JSONL (.jsonl, .ndjson), JSON (.json), Parquet (.parquet), CSV (.csv), "
    "or a Hugging Face dataset directory saved with save_to_disk"
)

# Files a `datasets` `save_to_disk` directory contains (Dataset, or DatasetDict).
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_UTF8_BOM = b"\xef\xbb\xbf"


def iter_records(path: str | Path, chunk_size: int = 1024) -> Iterator[list[LocatedRecord]]:
    """Yield the records of `path` in chunks of at most `chunk_size`, in file order.

    The format is chosen by suffix (or, for a directory, by the files `save_to_disk`
    writes). Raises `InputError` for a missing file, an unknown format, or a file whose
    structure cannot be read at all; rows yielded before such an error stay valid.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    return _chunked(_open_reader(Path(path), chunk_size), chunk_size)


def _open_reader(path: Path, batch_size: int) -> Iterator[LocatedRecord]:
    """Pick the reader for `path`; the checks run now, so `iter_records` fails fast."""
    file = str(path)
    if path.is_dir():
        return _read_hf_dataset(path, batch_size)
    if not path.exists():
        raise InputError(file, "file not found")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".parquet":
        return _read_parquet(path, batch_size)
    if suffix == ".csv":
        return _read_csv(path)
    raise InputError(file, f"unknown file format '{path.suffix}'; expected {SUPPORTED}")


def _chunked(records: Iterable[LocatedRecord], size: int) -> Iterator[list[LocatedRecord]]:
    """Group a record stream into lists of `size` (the last one may be shorter)."""
    chunk: list[LocatedRecord] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _type_name(value: Any) -> str:
    """A JSON-flavoured name for a value's type, for error messages."""
    if value is None:
        return "null"
    return type(value).__name__


def _as_record(loc: Location, value: Any) -> LocatedRecord:
    """Keep dict rows; anything else (a list, a number) is a row-level Failure."""
    if isinstance(value, dict):
        return loc, value
    return loc, Failure(loc, f"expected a JSON object, found {_type_name(value)}")


# --- JSON Lines ------------------------------------------------------------------------


def _read_jsonl(path: Path) -> Iterator[LocatedRecord]:
    """Read line by line in binary, so that one bad byte spoils one line, not the file."""
    file = str(path)
    offset = 0  # byte offset of the current line's start, for pointing at bad bytes
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            start = offset
            offset += len(raw)
            if line_no == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM):]
                start += len(_UTF8_BOM)
            if not raw.strip():
                continue
            yield _parse_jsonl_line(Location(file, line_no), raw, start)


def _parse_jsonl_line(loc: Location, raw: bytes, start: int) -> LocatedRecord:
    """Decode one line strictly as UTF-8, then as JSON; any problem is a Failure."""
    raw = raw.rstrip(b"\r\n")  # so a JSON error's column points into the line itself
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.start + 1].hex()
        reason = f"not valid UTF-8: byte 0x{bad} at byte offset {start + e.start}"
        return loc, Failure(loc, reason)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return loc, Failure(loc, f"invalid JSON: {e.msg} (column {e.colno})")
    return _as_record(loc, value)


# --- JSON ------------------------------------------------------------------------------


def _read_json(path: Path) -> Iterator[LocatedRecord]:
    """Stream a top-level JSON array item by item; line = 1-based item number.

    A top-level object with exactly one list value (`{"data": [...]}`, a common export
    shape) cannot be streamed with a fixed prefix, so it falls back to `json.load` and
    reads that list: this is the one reader whose memory grows with the file.
    """
    file = str(path)
    first = _first_json_byte(path)
    if first == b"[":
        return _stream_json_array(path)
    if first == b"{":
        return _read_wrapped_json_list(path)
    raise InputError(file, "expected a JSON array of objects (or an object holding one list)")


def _first_json_byte(path: Path) -> bytes:
    """The first non-whitespace byte of the file (after a BOM), or b"" if there is none."""
    with path.open("rb") as f:
        head = f.read(4096)
        while head:
            head = head.removeprefix(_UTF8_BOM).lstrip()
            if head:
                return head[:1]
            head = f.read(4096)
    return b""


def _stream_json_array(path: Path) -> Iterator[LocatedRecord]:
    import ijson

    file = str(path)
    item_no = 0
    with path.open("rb") as f:
        try:
            for item_no, value in enumerate(ijson.items(f, "item", use_float=True), start=1):
                yield _as_record(Location(file, item_no), value)
        except (ijson.JSONError, ijson.IncompleteJSONError, UnicodeDecodeError) as e:
            raise InputError(file, f"invalid JSON after item {item_no}: {e}") from e


def _read_wrapped_json_list(path: Path) -> Iterator[LocatedRecord]:
    file = str(path)
    try:
        with path.open("r", encoding="utf-8-sig") as f:
            document = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(file, f"invalid JSON: {e}") from e
    lists = [key for key, value in document.items() if isinstance(value, list)]
    if len(lists) != 1:
        keys = ", ".join(document) or "(none)"
        raise InputError(
            file,
            "expected a JSON array of objects, or an object with exactly one list value "
            f"(like {{\"data\": [...]}}); found an object with keys: {keys}",
        )
    for item_no, value in enumerate(document[lists[0]], start=1):
        yield _as_record(Location(file, item_no), value)


# --- Parquet ---------------------------------------------------------------------------


def _read_parquet(path: Path, batch_size: int) -> Iterator[LocatedRecord]:
    """Read batch by batch; line = 1-based row number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(file, f"not a readable Parquet file: {e}") from e
    return _iter_batches(file, parquet.iter_batches(batch_size=batch_size))


def _iter_batches(file: str, batches: Iterable[Any]) -> Iterator[LocatedRecord]:
    """Rows of Arrow record batches, numbered from 1 across batches."""
    row_no = 0
    for batch in batches:
        for row in batch.to_pylist():
            row_no += 1
            yield Location(file, row_no), row


# --- CSV -------------------------------------------------------------------------------

# A 1 MB answer is legitimate; csv's default limit is 128 KiB per field.
_CSV_FIELD_LIMIT = 2**31 - 1


def _read_csv(path: Path) -> Iterator[LocatedRecord]:
    """Read with the stdlib csv module; line = the line the record starts on.

    Uses `csv.reader` rather than `DictReader` so that a row with the wrong number of
    fields becomes a Failure instead of a dict with `None` keys or values. Bytes that are
    not UTF-8 are kept as surrogate escapes and reported per field, so one bad byte
    spoils one row rather than the whole file.
    """
    file = str(path)
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        if any(_has_bad_bytes(name) for name in header):
            raise InputError(file, "header row is not valid UTF-8", line=1)
        start = reader.line_num + 1
        for row in reader:
            loc = Location(file, start)
            start = reader.line_num + 1
            if row:  # csv yields [] for a blank line
                yield loc, _csv_record(loc, header, row)


def _csv_record(loc: Location, header: list[str], row: list[str]) -> Record:
    if len(row) != len(header):
        return Failure(loc, f"row has {len(row)} fields but the header has {len(header)}")
    for name, value in zip(header, row):
        if _has_bad_bytes(value):
            return Failure(loc, "not valid UTF-8", field=name)
    return dict(zip(header, row))


def _has_bad_bytes(text: str) -> bool:
    """True if decoding with errors="surrogateescape" had to escape a non-UTF-8 byte."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


# --- Hugging Face datasets -------------------------------------------------------------


def _read_hf_dataset(path: Path, batch_size: int) -> Iterator[LocatedRecord]:
    """Read a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.

    A DatasetDict is read from its "train" split, or its only split; with several splits
    and no "train" the choice would be a guess, so it is an InputError.
    """
    file = str(path)
    if not any((path / marker).is_file() for marker in _HF_MARKERS):
        raise InputError(
            file, f"is a directory but not a dataset saved with save_to_disk; expected {SUPPORTED}"
        )
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise InputError(file, f"cannot load the saved dataset: {e}") from e
    dataset = _pick_split(file, loaded)
    return _iter_hf_rows(file, dataset, batch_size)


def _pick_split(file: str, loaded: Any) -> Any:
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    if "train" in loaded:
        return loaded["train"]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    splits = ", ".join(loaded) or "(none)"
    raise InputError(file, f"dataset has several splits and no 'train' split: {splits}")


def _iter_hf_rows(file: str, dataset: Any, batch_size: int) -> Iterator[LocatedRecord]:
    """Rows of a `datasets.Dataset`, numbered from 1; batches are dicts of columns."""
    row_no = 0
    for batch in dataset.iter(batch_size=batch_size):
        columns = list(batch)
        for values in zip(*(batch[name] for name in columns)):
            row_no += 1
            yield Location(file, row_no), dict(zip(columns, values))

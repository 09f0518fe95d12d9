"""Data in and out: streaming readers for user files, and crash-safe writers.

Reading: `iter_records` streams raw rows from JSONL, JSON, Parquet, CSV or a saved
Hugging Face dataset; `read_examples` turns them into `Example`s (or `Failure`s with
file, line and field), detecting the column layout or using `parse_columns`' mapping.
Writing: `AtomicWriter` for result files, `JsonlAppender` for failed.jsonl and logs,
`write_json_atomic` for manifests, `write_text_atomic` for reports.
"""

from ontask.io.formats import iter_records
from ontask.io.layouts import detect_layout, parse_columns, to_examples
from ontask.io.reader import read_examples
from ontask.io.slicing import sliced
from ontask.io.writers import AtomicWriter, JsonlAppender, write_json_atomic, write_text_atomic

__all__ = [
    "AtomicWriter",
    "JsonlAppender",
    "detect_layout",
    "iter_records",
    "parse_columns",
    "read_examples",
    "sliced",
    "to_examples",
    "write_json_atomic",
    "write_text_atomic",
]

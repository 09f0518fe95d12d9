"""Tests for ontask.io: format readers, layouts, row failures, streaming, writers."""

from __future__ import annotations

import csv
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ontask.io import (
    AtomicWriter,
    JsonlAppender,
    detect_layout,
    iter_records,
    parse_columns,
    read_examples,
    to_examples,
    write_json_atomic,
)
from ontask.records import Example, Failure, InputError, Location

ALPACA_ROWS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue — like the sky."},
]
EXPECTED_TRIPLES = [
    ("Add 2 and 3.", "", "5"),
    ("Translate to French.", "cat", "chat"),
    ("Name a colour.", "", "Blue — like the sky."),
]


# --- helpers ---------------------------------------------------------------------------


def read_all(path: Path, **kwargs: Any) -> list[Example | Failure]:
    return [row for chunk in read_examples(path, **kwargs) for row in chunk]


def triples(rows: list[Example | Failure]) -> list[tuple[str, str, str]]:
    assert all(isinstance(row, Example) for row in rows), rows
    return [(row.instruction, row.input, row.output) for row in rows]  # type: ignore[union-attr]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                    encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def only_failure(rows: list[Example | Failure]) -> Failure:
    failures = [row for row in rows if isinstance(row, Failure)]
    assert len(failures) == 1, rows
    return failures[0]


# --- formats ---------------------------------------------------------------------------


def test_jsonl_yields_examples_with_lines_and_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", ALPACA_ROWS)
    rows = read_all(path)
    assert triples(rows) == EXPECTED_TRIPLES
    assert [row.loc for row in rows] == [Location(str(path), n) for n in (1, 2, 3)]
    assert [row.fields for row in rows] == ALPACA_ROWS  # type: ignore[union-attr]


def test_ndjson_suffix_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "data.ndjson"
    lines = [json.dumps(ALPACA_ROWS[0]), "", "   ", json.dumps(ALPACA_ROWS[1])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = read_all(path)
    assert triples(rows) == EXPECTED_TRIPLES[:2]
    assert [row.loc.line for row in rows] == [1, 4]


def test_jsonl_with_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ALPACA_ROWS[0]).encode() + b"\n")
    assert triples(read_all(path)) == EXPECTED_TRIPLES[:1]


def test_json_array(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ALPACA_ROWS, ensure_ascii=False, indent=2), encoding="utf-8")
    rows = read_all(path)
    assert triples(rows) == EXPECTED_TRIPLES
    assert [row.loc.line for row in rows] == [1, 2, 3]


def test_json_object_wrapping_one_list(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 2, "data": ALPACA_ROWS}), encoding="utf-8")
    rows = read_all(path)
    assert triples(rows) == EXPECTED_TRIPLES
    assert [row.loc.line for row in rows] == [1, 2, 3]


def test_json_object_without_a_single_list_is_input_error(tmp_path: Path) -> None:
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"a": [], "b": []}), encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_all(path)
    assert err.value.file == str(path)
    assert "keys: a, b" in str(err.value)


def test_json_array_non_object_item_is_failure(tmp_path: Path) -> None:
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([ALPACA_ROWS[0], "just text", ALPACA_ROWS[1]]), encoding="utf-8")
    rows = read_all(path)
    assert triples([rows[0], rows[2]]) == EXPECTED_TRIPLES[:2]
    assert rows[1] == Failure(Location(str(path), 2), "expected a JSON object, found str")


def test_json_array_truncated_keeps_earlier_rows_then_raises(tmp_path: Path) -> None:
    path = tmp_path / "truncated.json"
    text = json.dumps(ALPACA_ROWS)
    path.write_text(text[: text.index("Name a")], encoding="utf-8")
    got: list[Example | Failure] = []
    with pytest.raises(InputError) as err:
        for chunk in read_examples(path, chunk_size=1):
            got.extend(chunk)
    assert triples(got) == EXPECTED_TRIPLES[:2]
    assert err.value.file == str(path)
    assert "after item 2" in str(err.value)


def test_json_floats_are_python_floats(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text(json.dumps([{**ALPACA_ROWS[0], "score": 0.25}]), encoding="utf-8")
    (chunk,) = list(iter_records(path))
    record = chunk[0][1]
    assert record["score"] == 0.25 and type(record["score"]) is float


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(ALPACA_ROWS), path, row_group_size=2)
    rows = read_all(path, chunk_size=2)
    assert triples(rows) == EXPECTED_TRIPLES
    assert [row.loc.line for row in rows] == [1, 2, 3]


def test_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", ALPACA_ROWS)
    rows = read_all(path)
    assert triples(rows) == EXPECTED_TRIPLES
    assert [row.loc.line for row in rows] == [2, 3, 4]  # line 1 is the header


def test_csv_multiline_field_reports_the_starting_line(tmp_path: Path) -> None:
    path = tmp_path / "multi.csv"
    path.write_text(
        'instruction,output\n"Write two lines.","one\ntwo"\n\n"Say hi.",hi\n', encoding="utf-8"
    )
    rows = read_all(path)
    assert triples(rows) == [("Write two lines.", "", "one\ntwo"), ("Say hi.", "", "hi")]
    assert [row.loc.line for row in rows] == [2, 5]


def test_csv_wrong_field_count_and_bad_byte_are_failures(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"instruction,output\nA,1\nB,2,extra\nC,\xff\nD,4\n")
    rows = read_all(path)
    assert triples([rows[0], rows[3]]) == [("A", "", "1"), ("D", "", "4")]
    assert rows[1] == Failure(Location(str(path), 3), "row has 3 fields but the header has 2")
    assert rows[2] == Failure(Location(str(path), 4), "not valid UTF-8", field="output")


def test_hf_dataset_saved_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "hf"
    datasets.Dataset.from_list(ALPACA_ROWS).save_to_disk(str(path))
    rows = read_all(path, chunk_size=2)
    assert triples(rows) == EXPECTED_TRIPLES
    assert [row.loc for row in rows] == [Location(str(path), n) for n in (1, 2, 3)]


def test_hf_dataset_dict_uses_train_or_only_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    train = datasets.Dataset.from_list(ALPACA_ROWS)
    other = datasets.Dataset.from_list(ALPACA_ROWS[:1])
    with_train = tmp_path / "with_train"
    datasets.DatasetDict({"test": other, "train": train}).save_to_disk(str(with_train))
    assert triples(read_all(with_train)) == EXPECTED_TRIPLES
    only = tmp_path / "only"
    datasets.DatasetDict({"validation": other}).save_to_disk(str(only))
    assert triples(read_all(only)) == EXPECTED_TRIPLES[:1]
    ambiguous = tmp_path / "ambiguous"
    datasets.DatasetDict({"a": other, "b": other}).save_to_disk(str(ambiguous))
    with pytest.raises(InputError, match="several splits and no 'train' split: a, b"):
        read_all(ambiguous)


def test_all_formats_yield_the_same_examples(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    write_jsonl(tmp_path / "d.jsonl", ALPACA_ROWS)
    (tmp_path / "d.json").write_text(json.dumps(ALPACA_ROWS), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(ALPACA_ROWS), tmp_path / "d.parquet")
    write_csv(tmp_path / "d.csv", ALPACA_ROWS)
    datasets.Dataset.from_list(ALPACA_ROWS).save_to_disk(str(tmp_path / "d_hf"))
    for name in ("d.jsonl", "d.json", "d.parquet", "d.csv", "d_hf"):
        assert triples(read_all(tmp_path / name)) == EXPECTED_TRIPLES, name


def test_unknown_suffix_missing_file_and_plain_directory(tmp_path: Path) -> None:
    txt = tmp_path / "data.txt"
    txt.write_text("hello", encoding="utf-8")
    with pytest.raises(InputError, match=r"unknown file format '\.txt'") as err:
        iter_records(txt)
    assert err.value.file == str(txt)
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(InputError, match="file not found") as err:
        iter_records(missing)
    assert err.value.file == str(missing)
    with pytest.raises(InputError, match="not a dataset saved with save_to_disk"):
        iter_records(tmp_path)


# --- layouts ---------------------------------------------------------------------------


def test_alpaca_missing_input_is_empty(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Hi?", "output": "Hello."}])
    assert triples(read_all(path)) == [("Hi?", "", "Hello.")]


def test_null_input_is_empty(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Hi?", "input": None,
                                                "output": "Hello."}])
    assert triples(read_all(path)) == [("Hi?", "", "Hello.")]


def test_dolly(tmp_path: Path) -> None:
    record = {"instruction": "Summarise.", "context": "Long text.", "response": "Short.",
              "category": "summarization"}
    path = write_jsonl(tmp_path / "dolly.jsonl", [record])
    rows = read_all(path)
    assert triples(rows) == [("Summarise.", "Long text.", "Short.")]
    assert rows[0].fields == record  # type: ignore[union-attr]


def test_dolly_failure_names_the_dolly_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dolly.jsonl", [
        {"instruction": "A", "context": "", "response": "ok"},
        {"instruction": "B", "context": "", "response": "  "},
    ])
    assert only_failure(read_all(path)) == Failure(
        Location(str(path), 2), "empty output", field="response")


def test_chat_with_system_message(tmp_path: Path) -> None:
    record = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]}
    path = write_jsonl(tmp_path / "chat.jsonl", [record])
    rows = read_all(path)
    assert triples(rows) == [("Capital of France?", "", "Paris.")]
    assert rows[0].fields == record  # type: ignore[union-attr]


def test_chat_multi_turn_is_failure(tmp_path: Path) -> None:
    single = {"messages": [{"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello"}]}
    multi = {"messages": [{"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello"},
                          {"role": "user", "content": "How are you?"},
                          {"role": "assistant", "content": "Fine."}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [single, multi, single])
    rows = read_all(path)
    assert triples([rows[0], rows[2]]) == [("Hi", "", "Hello")] * 2
    assert rows[1] == Failure(Location(str(path), 2),
                              "multi-turn conversations are not supported (2 turns)",
                              field="messages")


def test_chat_wrong_roles_and_non_string_content(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "user", "content": 5},
                      {"role": "assistant", "content": "Five"}]},
    ])
    rows = read_all(path)
    assert rows == [
        Failure(Location(str(path), 1), "expected one user message then one assistant "
                "message; found roles: assistant, user", field="messages"),
        Failure(Location(str(path), 2), "message 0: content: expected a string, found int",
                field="messages"),
    ]


def test_self_instruct_expands_instances(tmp_path: Path) -> None:
    record = {"id": "seed_1", "instruction": "Reverse the word.", "is_classification": False,
              "instances": [{"input": "cat", "output": "tac"}, {"input": "dog", "output": "god"}]}
    path = write_jsonl(tmp_path / "si.jsonl", [record])
    rows = read_all(path)
    assert triples(rows) == [("Reverse the word.", "cat", "tac"),
                             ("Reverse the word.", "dog", "god")]
    assert [row.loc for row in rows] == [
        Location(str(path), 1, "instances[0]"), Location(str(path), 1, "instances[1]")]
    assert rows[1].fields == {  # type: ignore[union-attr]
        "id": "seed_1", "instruction": "Reverse the word.", "is_classification": False,
        "input": "dog", "output": "god", "instance_index": 1}


def test_self_instruct_bad_instances(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "si.jsonl", [
        {"instruction": "Do it.", "instances": []},
        {"instruction": "Do it.", "instances": [{"input": "x", "output": "y"}, {"input": "z"}]},
    ])
    rows = read_all(path)
    assert rows[0] == Failure(Location(str(path), 1), "empty instances list", field="instances")
    assert triples([rows[1]]) == [("Do it.", "x", "y")]
    assert rows[2] == Failure(Location(str(path), 2, "instances[1]"),
                              "missing required field 'output'", field="output")


def test_columns_mapping(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "custom.jsonl", [
        {"q": "Why?", "ctx": "Because.", "a": "That is why.", "id": 7},
        {"q": "How?", "a": "Like this."},
    ])
    columns = parse_columns("instruction=q,input=ctx,output=a")
    rows = read_all(path, columns=columns)
    assert triples(rows) == [("Why?", "Because.", "That is why."), ("How?", "", "Like this.")]
    first = rows[0]
    assert isinstance(first, Example)
    assert first.fields == {"q": "Why?", "ctx": "Because.", "a": "That is why.", "id": 7}


def test_columns_override_detection(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "both.jsonl", [
        {"instruction": "ignored", "output": "ignored", "prompt": "P", "completion": "C"}])
    rows = read_all(path, columns=parse_columns("instruction=prompt,output=completion"))
    assert triples(rows) == [("P", "", "C")]


def test_columns_naming_absent_column_is_input_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "custom.jsonl", [{"q": "Why?", "a": "Because."}])
    with pytest.raises(InputError) as err:
        read_all(path, columns=parse_columns("instruction=q,input=context,output=a"))
    assert err.value.file == str(path)
    assert "column 'context' (given as input=context in --columns) not found" in str(err.value)
    assert "keys found: a, q" in str(err.value)


def test_parse_columns() -> None:
    assert parse_columns("instruction=q,output=a") == {"instruction": "q", "output": "a"}
    assert parse_columns(" instruction = q , input = c , output = a ") == {
        "instruction": "q", "input": "c", "output": "a"}
    with pytest.raises(ValueError, match="bad --columns entry 'instruction'"):
        parse_columns("instruction,output=a")
    with pytest.raises(ValueError, match="unknown role 'answer'"):
        parse_columns("instruction=q,answer=a")
    with pytest.raises(ValueError, match="role 'output' given twice"):
        parse_columns("instruction=q,output=a,output=b")
    with pytest.raises(ValueError, match="must name output"):
        parse_columns("instruction=q,input=c")
    with pytest.raises(ValueError, match="bad --columns entry ''"):
        parse_columns("")


def test_detect_layout() -> None:
    assert detect_layout({"instruction": "", "input": "", "output": ""}) == "alpaca"
    assert detect_layout({"instruction": "", "context": "", "response": ""}) == "dolly"
    assert detect_layout({"messages": []}) == "chat"
    assert detect_layout({"instruction": "", "instances": []}) == "self_instruct"


def test_unknown_layout_names_file_and_keys(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "Q", "answer": "A"}])
    with pytest.raises(InputError) as err:
        read_all(path)
    message = str(err.value)
    assert err.value.file == str(path)
    assert message.startswith(f"{path}: no known column layout; keys found: answer, question.")
    assert "--columns instruction=...,input=...,output=..." in message


def test_to_examples_directly() -> None:
    loc = Location("f.jsonl", 3)
    record = {"instruction": "I", "output": "O"}
    assert to_examples(loc, record, "alpaca") == [Example("I", "", "O", loc)]
    with pytest.raises(ValueError, match="unknown layout 'nope'"):
        to_examples(loc, record, "nope")


# --- bad rows --------------------------------------------------------------------------


def test_bad_rows_become_failures_and_good_rows_survive_in_order(tmp_path: Path) -> None:
    good = [{"instruction": f"Q{n}", "input": "", "output": f"A{n}"} for n in range(6)]
    lines = [
        json.dumps(good[0]).encode(),
        b'{"instruction": "Q", "output": ',                       # 2: malformed JSON
        json.dumps(good[1]).encode(),
        b'{"instruction": "Q\xff", "output": "A"}',                # 4: non-UTF-8 byte
        json.dumps({"instruction": "Q", "input": ""}).encode(),   # 5: missing output
        json.dumps(good[2]).encode(),
        json.dumps({"instruction": "Q", "output": "  \n"}).encode(),  # 7: empty output
        json.dumps({"instruction": "Q", "output": 42}).encode(),      # 8: int
        json.dumps({"instruction": ["Q"], "output": "A"}).encode(),   # 9: list
        json.dumps({"instruction": "", "output": "A"}).encode(),      # 10: empty instruction
        json.dumps({"instruction": "Q", "input": 3.5, "output": "A"}).encode(),  # 11: float
        json.dumps(good[3]).encode(),
        b"[1, 2]",                                                # 13: not an object
        json.dumps(good[4]).encode(),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    file = str(path)
    bad_byte_offset = sum(len(line) + 1 for line in lines[:3]) + lines[3].index(b"\xff")
    rows = read_all(path)
    assert rows == [
        Example("Q0", "", "A0", Location(file, 1)),
        Failure(Location(file, 2), "invalid JSON: Expecting value (column 32)"),
        Example("Q1", "", "A1", Location(file, 3)),
        Failure(Location(file, 4),
                f"not valid UTF-8: byte 0xff at byte offset {bad_byte_offset}"),
        Failure(Location(file, 5), "missing required field 'output'", field="output"),
        Example("Q2", "", "A2", Location(file, 6)),
        Failure(Location(file, 7), "empty output", field="output"),
        Failure(Location(file, 8), "expected a string, found int", field="output"),
        Failure(Location(file, 9), "expected a string, found list", field="instruction"),
        Failure(Location(file, 10), "empty instruction", field="instruction"),
        Failure(Location(file, 11), "expected a string, found float", field="input"),
        Example("Q3", "", "A3", Location(file, 12)),
        Failure(Location(file, 13), "expected a JSON object, found list"),
        Example("Q4", "", "A4", Location(file, 14)),
    ]


def test_later_row_of_another_layout_is_missing_field_failure(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}]},
        {"instruction": "Q", "output": "A"},
    ])
    rows = read_all(path)
    assert rows[1] == Failure(Location(str(path), 2), "missing required field 'messages'",
                              field="messages")


def test_layout_detected_from_first_object_record(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('not json\n"a string"\n' + json.dumps(ALPACA_ROWS[0]) + "\n",
                    encoding="utf-8")
    rows = read_all(path)
    assert [type(row) for row in rows] == [Failure, Failure, Example]


def test_one_megabyte_output_is_read(tmp_path: Path) -> None:
    big = "x" * 1_000_000
    record = {"instruction": "Repeat x.", "output": big}
    jsonl = write_jsonl(tmp_path / "big.jsonl", [record])
    csv_path = write_csv(tmp_path / "big.csv", [record])
    for path in (jsonl, csv_path):
        (row,) = read_all(path)
        assert isinstance(row, Example) and row.output == big


# --- chunking and memory ---------------------------------------------------------------


def test_chunk_sizes(tmp_path: Path) -> None:
    rows = [{"instruction": f"Q{n}", "output": f"A{n}"} for n in range(2500)]
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    assert [len(chunk) for chunk in iter_records(path, chunk_size=1000)] == [1000, 1000, 500]
    chunks = list(read_examples(path, chunk_size=1000))
    assert [len(chunk) for chunk in chunks] == [1000, 1000, 500]
    assert chunks[2][-1] == Example("Q2499", "", "A2499", Location(str(path), 2500))


def test_chunk_size_must_be_positive(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ALPACA_ROWS)
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        iter_records(path, chunk_size=0)


def test_reading_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "large.jsonl"
    n_rows = 200_000
    with path.open("w", encoding="utf-8") as f:
        for n in range(n_rows):
            f.write(json.dumps({"instruction": f"Question {n}?", "input": "",
                                "output": f"Answer number {n}."}) + "\n")
    file_size = path.stat().st_size
    count = 0
    tracemalloc.start()
    try:
        for chunk in read_examples(path, chunk_size=1000):
            count += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n_rows
    assert peak < file_size / 4, (peak, file_size)


# --- writers ---------------------------------------------------------------------------


def test_atomic_writer_jsonl_with_unusual_values(tmp_path: Path) -> None:
    import datetime as dt

    path = tmp_path / "out" / "scored.jsonl"
    rows = [
        {"instruction": "Q", "tss": np.float32(0.5), "rank": np.int64(3), "text": "café",
         "vec": np.array([1, 2]), "when": dt.date(2024, 5, 1), "obj": Path("a/b")},
    ]
    with AtomicWriter(path) as out:
        out.write(rows)
        out.write([{"instruction": "R"}])
        assert not path.exists()
    assert out.rows_written == 2
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"instruction": "Q", "tss": 0.5, "rank": 3, "text": "café",
                                    "vec": [1, 2], "when": "2024-05-01", "obj": "a/b"}
    assert "café" in lines[0]  # ensure_ascii=False
    assert json.loads(lines[1]) == {"instruction": "R"}
    assert os.listdir(path.parent) == ["scored.jsonl"]


def test_atomic_writer_keeps_old_file_on_exception(tmp_path: Path) -> None:
    for name in ("scored.jsonl", "scored.parquet"):
        path = tmp_path / name
        path.write_bytes(b"old contents\n")
        with pytest.raises(RuntimeError, match="boom"):
            with AtomicWriter(path) as out:
                out.write([{"a": 1}, {"a": 2}])
                raise RuntimeError("boom")
        assert path.read_bytes() == b"old contents\n"
        assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []


def test_atomic_writer_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("old\n", encoding="utf-8")
    with AtomicWriter(path) as out:
        out.write([{"a": 1}])
    assert path.read_text(encoding="utf-8") == '{"a": 1}\n'


def test_parquet_round_trip_keeps_all_columns(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    rows = [{**row, "id": n, "tags": ["x", "y"], "meta": {"src": "web"}}
            for n, row in enumerate(ALPACA_ROWS)]
    pq.write_table(pa.Table.from_pylist(rows), source)
    out = tmp_path / "out.parquet"
    with AtomicWriter(out) as writer:
        for chunk in read_examples(source, chunk_size=2):
            writer.write([{**row.fields, "tss": np.float64(0.1 * n)}  # type: ignore[union-attr]
                          for n, row in enumerate(chunk)])
    table = pq.read_table(out)
    assert table.column_names == ["instruction", "input", "output", "id", "tags", "meta", "tss"]
    assert table.to_pylist() == [{**row, "tss": 0.1 * (n % 2)} for n, row in enumerate(rows)]


def test_parquet_writer_fills_missing_columns_and_takes_union_of_keys(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    with AtomicWriter(path) as out:
        out.write([{"a": 1, "b": None}, {"a": 2, "b": "x"}])
        out.write([{"a": 3}])
    assert pq.read_table(path).to_pylist() == [
        {"a": 1, "b": None}, {"a": 2, "b": "x"}, {"a": 3, "b": None}]


def test_parquet_writer_names_column_that_cannot_be_cast(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    with pytest.raises(ValueError, match="column 'score' has type string in this chunk but int64"):
        with AtomicWriter(path) as out:
            out.write([{"id": 1, "score": 1}])
            out.write([{"id": 2, "score": "high"}])
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_parquet_writer_rejects_new_column(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    with pytest.raises(ValueError, match="column 'extra' is not in the schema"):
        with AtomicWriter(path) as out:
            out.write([{"id": 1}])
            out.write([{"id": 2, "extra": "x"}])


def test_empty_parquet_output_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    with AtomicWriter(path):
        pass
    assert pq.read_table(path).num_rows == 0


def test_jsonl_appender(tmp_path: Path) -> None:
    path = tmp_path / "run" / "failed.jsonl"
    failure = Failure(Location("in.jsonl", 4), "empty output", field="output")
    with JsonlAppender(path) as log:
        log.write(failure.to_json())
        assert path.read_text(encoding="utf-8").count("\n") == 1  # flushed already
    with JsonlAppender(path) as log:
        log.write_many([{"n": 1}, {"n": 2}])
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [
        {"file": "in.jsonl", "line": 4, "item": None, "field": "output", "stage": "read",
         "reason": "empty output"},
        {"n": 1},
        {"n": 2},
    ]


def test_jsonl_appender_starts_fresh_line_after_torn_write(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"n": 1}\n{"n": 2, "tru', encoding="utf-8")
    with JsonlAppender(path) as log:
        log.write({"n": 3})
    assert path.read_text(encoding="utf-8").splitlines() == ['{"n": 1}', '{"n": 2, "tru',
                                                             '{"n": 3}']


def test_write_json_atomic(tmp_path: Path) -> None:
    path = tmp_path / "run" / "run.json"
    write_json_atomic(path, {"counts": {"read": np.int64(5)}, "model": "smollm2"})
    assert path.read_text(encoding="utf-8") == (
        '{\n  "counts": {\n    "read": 5\n  },\n  "model": "smollm2"\n}\n')
    write_json_atomic(path, {"counts": {"read": 6}})
    assert json.loads(path.read_text(encoding="utf-8")) == {"counts": {"read": 6}}
    assert os.listdir(path.parent) == ["run.json"]


def test_write_json_atomic_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text('{"ok": true}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="Circular reference"):
        write_json_atomic(path, {"x": _circular()})
    assert path.read_text(encoding="utf-8") == '{"ok": true}\n'
    assert os.listdir(tmp_path) == ["run.json"]


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def test_augment_output_is_read_with_its_input(tmp_path):
    """`ontask augment` writes instruction/input/response: scoring must see the input (not Dolly's empty context)."""
    from ontask.io import read_examples

    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"instruction": "Reply.", "input": "My order is late.", "response": "Sorry!", "hop": 1}) + "\n")
    (chunk,) = list(read_examples(path))
    (ex,) = chunk
    assert (ex.instruction, ex.input, ex.output) == ("Reply.", "My order is late.", "Sorry!")


def test_a_slice_is_the_first_rows_or_a_seeded_draw_in_file_order():
    from ontask.io import sliced

    chunks = lambda: iter([[0, 1, 2], [3, 4], [5, 6, 7, 8]])  # noqa: E731
    assert list(sliced(chunks, limit=4)) == [[0, 1, 2], [3]]
    assert list(sliced(chunks)) == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    drawn = [x for c in sliced(chunks, sample=4, seed=3) for x in c]
    assert len(drawn) == 4 and drawn == sorted(drawn)  # file order
    assert drawn == [x for c in sliced(chunks, sample=4, seed=3) for x in c]  # same seed, same rows
    assert {tuple(x for c in sliced(chunks, sample=4, seed=s) for x in c) for s in range(10)} != {tuple(drawn)}
    assert [x for c in sliced(chunks, sample=50) for x in c] == list(range(9))  # more than there are: all


def test_decompose_limit_and_sample_take_a_slice(tmp_path):
    """Rows that carry their decomposition need no model: the slice is all that is checked."""
    from typer.testing import CliRunner

    from ontask.cli.main import app

    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Write {i} lines.", "task_type": "writing",
                                       "base_query": f"Write {i} lines.", "constraints": []}) + "\n" for i in range(10)))
    for flags, n in ((["--limit", "3"], 3), (["--sample", "4", "--seed", "1"], 4)):
        out = tmp_path / f"o{n}.jsonl"
        res = CliRunner().invoke(app, ["decompose", str(src), "-o", str(out), *flags])
        assert res.exit_code == 0, res.output
        lines = [json.loads(x)["_line"] for x in out.read_text().splitlines()]
        assert len(lines) == n and lines == sorted(lines)
        if n == 3:
            assert lines == [1, 2, 3]

"""Bad input end to end through `ontask score` with the tiny random model.

Row-level problems (a malformed line, a missing or empty or non-string output, a bad
byte, a row too long for the model) must each become one entry in failed.jsonl with the
right line, field and reason, while the good rows are scored and written with every
original field; the exit code stays 0. File-level problems (no recognisable layout, a
--columns name that is not there, a missing file) exit with code 2 and a message that
names the file or column. A rerun with the same cache recomputes nothing.
"""

from __future__ import annotations

import csv
import json
from ontask.runs import side_file
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ontask.cli.main import app

HUGE_OUTPUT = "word " * 200_000  # ~1 MB: far beyond the tiny model's 2048 positions


def good_row(i: int) -> dict[str, Any]:
    return {
        "instruction": f"Summarise the meeting notes number {i}.",
        "input": f"Notes {i}: we agreed to ship on Friday." if i % 2 else "",
        "output": f"- Ship on Friday ({i}).\n- Review on Monday.",
        "id": f"good-{i}",
        "meta": {"source": "test", "n": i},
    }


def jline(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def build_bad_file(path: Path, *, huge: bool = True) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """Good rows interleaved with bad ones. Returns (good rows, expected failures by line)."""
    good = [good_row(i) for i in range(1, 7)]
    lines: list[bytes] = []
    expected: dict[int, dict[str, Any]] = {}

    def add(raw: bytes, failure: dict[str, Any] | None = None) -> None:
        lines.append(raw)
        if failure is not None:
            expected[len(lines)] = failure

    add(jline(good[0]))  # line 1: good, and decides the layout
    add(b'{"instruction": "Broken row", "output": ', {"field": None, "stage": "read", "has": ["invalid JSON"]})
    add(jline(good[1]))
    add(jline({"instruction": "No output column here.", "input": "x", "id": "bad-missing"}),
        {"field": "output", "stage": "read", "has": ["missing", "'output'"]})
    add(jline({"instruction": "Empty output.", "input": "", "output": "", "id": "bad-empty"}),
        {"field": "output", "stage": "read", "has": ["empty output"]})
    add(jline(good[2]))
    bad_byte = jline({"instruction": "Bad byte XX here.", "output": "fine", "id": "bad-byte"}).replace(b"XX", b"\xff")
    offset = sum(len(line) + 1 for line in lines) + bad_byte.index(b"\xff")
    add(bad_byte, {"field": None, "stage": "read", "has": ["not valid UTF-8", "0xff", f"offset {offset}"]})
    add(jline({"instruction": "Answer with a number.", "input": "", "output": 42, "id": "bad-int"}),
        {"field": "output", "stage": "read", "has": ["expected a string", "int"]})
    add(jline(good[3]))
    if huge:
        add(jline({"instruction": "Repeat the word.", "input": "", "output": HUGE_OUTPUT, "id": "bad-huge"}),
            {"field": None, "stage": "score", "has": ["too long", "2048"]})
    add(jline(good[4]))
    add(jline({"instruction": "Null output.", "output": None, "id": "bad-null"}),
        {"field": "output", "stage": "read", "has": ["expected a string", "null"]})
    add(b"[1, 2, 3]", {"field": None, "stage": "read", "has": ["expected a JSON object", "list"]})
    add(jline(good[5]))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return good, expected


def flat(text: str) -> str:
    """The text with all whitespace removed (rich wraps long lines, even inside paths)."""
    return "".join(text.split())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def score(tiny_dir: Path, src: Path, out: Path, cache: Path, *extra: str):
    args = ["score", str(src), "-o", str(out), "--scorer", f"hf:{tiny_dir}",
            "--metrics", "ppl,ifd", "--cache", str(cache), *extra]
    return CliRunner().invoke(app, args)


def check_failed(failed: list[dict[str, Any]], expected: dict[int, dict[str, Any]], src: Path) -> None:
    by_line = {f["line"]: f for f in failed}
    assert len(by_line) == len(failed), f"two failures for one line: {failed}"
    assert sorted(by_line) == sorted(expected)
    for line, want in expected.items():
        got = by_line[line]
        assert got["field"] == want["field"], got
        assert got["stage"] == want["stage"], got
        assert got["file"] == str(src)
        for fragment in want["has"]:
            assert fragment in got["reason"], (fragment, got)


# --- row-level problems ----------------------------------------------------------------


def test_bad_rows_go_to_failed_jsonl_and_good_rows_are_scored(tiny_dir, tmp_path):
    src = tmp_path / "mixed.jsonl"
    good, expected = build_bad_file(src)
    out = tmp_path / "out" / "scored.jsonl"
    result = score(tiny_dir, src, out, tmp_path / "c.sqlite")
    assert result.exit_code == 0, result.output
    assert result.exception is None

    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [g["id"] for g in good]
    for row, original in zip(rows, good):
        for key, value in original.items():
            assert row[key] == value  # every original field kept verbatim
        for col in ("ppl", "ifd"):
            assert isinstance(row[col], float) and math.isfinite(row[col]), (col, row)
        assert row["ppl"] > 1.0  # a random model is unsure of everything
        assert isinstance(row["tokens"], int) and row["tokens"] > 0

    check_failed(read_jsonl(side_file(out, "failed.jsonl")), expected, src)

    manifest = json.loads((side_file(out, "run.json")).read_text(encoding="utf-8"))
    c = manifest["counts"]
    assert c["rows_scored"] == len(good)
    assert c["rows_failed"] == len(expected)
    assert manifest["failed"] == str(side_file(out, "failed.jsonl"))
    assert "failed" in flat(result.output)


def test_bad_first_line_does_not_stop_the_file(tiny_dir, tmp_path):
    src = tmp_path / "first_bad.jsonl"
    src.write_bytes(b"{not json\n" + jline(good_row(1)) + b"\n\xff\xfe\n" + jline(good_row(2)) + b"\n")
    out = tmp_path / "out" / "scored.jsonl"
    result = score(tiny_dir, src, out, tmp_path / "c.sqlite")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_jsonl(out)] == ["good-1", "good-2"]
    failed = read_jsonl(side_file(out, "failed.jsonl"))
    assert {f["line"]: f["reason"].split(":")[0] for f in failed} == {1: "invalid JSON", 3: "not valid UTF-8"}


def test_rerun_after_appending_a_bad_line_recomputes_nothing(tiny_dir, tmp_path):
    src = tmp_path / "resume.jsonl"
    good, expected = build_bad_file(src, huge=False)  # a too-long row has no cached pass
    out = tmp_path / "out" / "scored.jsonl"
    cache = tmp_path / "c.sqlite"
    first = score(tiny_dir, src, out, cache)
    assert first.exit_code == 0, first.output
    run1 = json.loads((side_file(out, "run.json")).read_text(encoding="utf-8"))
    passes = 2 * len(good)  # ppl,ifd: the true and the empty pass of each good row
    assert run1["counts"]["passes_computed"] == passes
    assert run1["counts"]["passes_cached"] == 0
    rows1 = read_jsonl(out)

    n_lines = len(src.read_bytes().splitlines())
    with src.open("ab") as f:
        f.write(b'{"instruction": "appended and broken", \n')
    second = score(tiny_dir, src, out, cache)
    assert second.exit_code == 0, second.output
    run2 = json.loads((side_file(out, "run.json")).read_text(encoding="utf-8"))
    assert run2["counts"]["passes_cached"] == passes
    assert run2["counts"]["passes_computed"] == 0
    assert run2["counts"]["passes_needed"] == passes
    assert run2["tokens_computed"] == 0
    assert run2["counts"]["rows_failed"] == len(expected) + 1
    assert read_jsonl(out) == rows1  # same rows, same scores, bit for bit
    failed = read_jsonl(side_file(out, "failed.jsonl"))
    assert len(failed) == len(expected) + 1  # re-derived, not appended twice
    assert {f["line"] for f in failed} == set(expected) | {n_lines + 1}


# --- file-level problems ---------------------------------------------------------------


def test_unrecognised_layout_exits_2_naming_the_file(tiny_dir, tmp_path):
    src = tmp_path / "prompts.jsonl"
    src.write_text(
        json.dumps({"prompt": "Say hi.", "completion": "Hi."}) + "\n" + json.dumps(good_row(1)) + "\n",
        encoding="utf-8",
    )
    result = score(tiny_dir, src, tmp_path / "out" / "scored.jsonl", tmp_path / "c.sqlite")
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert flat(str(src)) in text
    assert "error" in text
    assert flat("no known column layout") in text
    assert "completion" in text and "prompt" in text  # the keys it found
    assert "--columns" in text  # and how to fix it
    assert not (tmp_path / "out" / "scored.jsonl").exists()


@pytest.mark.parametrize(
    ("columns", "missing"),
    [
        ("instruction=question,input=context,output=reply", "reply"),
        ("instruction=question,input=notes,output=answer", "notes"),
        ("instruction=prompt,output=answer", "prompt"),
    ],
)
def test_csv_with_a_missing_named_column_exits_2_naming_it(tiny_dir, tmp_path, columns, missing):
    src = tmp_path / "qa.csv"
    with src.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "context", "answer"])
        w.writerow(["What is 2+2?", "", "4"])
        w.writerow(["Capital of France?", "geography", "Paris"])
    result = score(tiny_dir, src, tmp_path / "out" / "scored.jsonl", tmp_path / "c.sqlite", "--columns", columns)
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert flat(f"column '{missing}'") in text
    assert "notfound" in text
    assert flat(str(src)) in text
    assert "answer" in text and "question" in text  # the keys that are there


def test_csv_with_columns_scores_when_names_match(tiny_dir, tmp_path):
    src = tmp_path / "qa.csv"
    with src.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "context", "answer"])
        w.writerow(["What is 2+2?", "", "4"])
        w.writerow(["Capital of France?", "geography", ""])  # empty answer: a row failure
        w.writerow(["Capital of Spain?", "geography", "Madrid"])
    out = tmp_path / "out" / "scored.jsonl"
    result = score(tiny_dir, src, out, tmp_path / "c.sqlite", "--columns", "instruction=question,input=context,output=answer")
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert [r["answer"] for r in rows] == ["4", "Madrid"]
    assert all({"question", "context", "answer", "ppl", "ifd"} <= set(r) for r in rows)
    failed = read_jsonl(side_file(out, "failed.jsonl"))
    assert [(f["line"], f["field"]) for f in failed] == [(3, "answer")]
    assert "empty output" in failed[0]["reason"]


def test_nonexistent_input_exits_2_with_a_message(tiny_dir, tmp_path):
    src = tmp_path / "nope.jsonl"
    result = score(tiny_dir, src, tmp_path / "out" / "scored.jsonl", tmp_path / "c.sqlite")
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert flat(str(src)) in text
    assert "nosuchfile" in text


def test_unknown_format_exits_2_with_a_message(tiny_dir, tmp_path):
    src = tmp_path / "data.txt"
    src.write_text("instruction: hi\n", encoding="utf-8")
    result = score(tiny_dir, src, tmp_path / "out" / "scored.jsonl", tmp_path / "c.sqlite")
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert flat(str(src)) in text
    assert flat("unknown file format") in text


def test_bad_columns_flag_exits_2_before_loading_anything(tmp_path):
    src = tmp_path / "qa.csv"
    src.write_text("q,a\nhi,there\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["score", str(src), "-o", str(tmp_path / "out"), "--scorer", "hf:/no/such/model",
                                      "--columns", "question=q,output=a"])
    assert result.exit_code == 2, result.output
    assert flat("unknown role 'question'") in flat(result.output)

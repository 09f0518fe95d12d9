"""`ontask decompose`, `ontask db build`, `ontask eval decompose` through the CLI, against the
fake OpenAI-compatible server on 127.0.0.1 (real HTTP, deterministic TCIA answers)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ontask.cli.main import app
from ontask.tcia.database import ConstraintDB
from ontask.testing.fake_server import FakeServer
from ontask.testing.tcia_handler import tcia_chat_handler

from conftest import shared

runner = CliRunner()
PROMPTS = [
    {"instruction": "Reply to the customer. Apologise once, and keep it under 80 words."},
    {"instruction": "Summarise the meeting. Use three bullet points, and name every owner."},
    {"prompt": "no instruction field here"},
]


@pytest.fixture(scope="module")
def server():
    with FakeServer(chat_handler=tcia_chat_handler) as srv:
        yield srv


def read_jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_decompose_then_build_a_database_from_its_output(tmp_path, server):
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS[:2]) + json.dumps({"other": 1}) + "\n")
    out = tmp_path / "dec" / "decomposed.jsonl"
    res = runner.invoke(app, ["decompose", str(src), "-o", str(out), "--decomposer", "openai:tiny",
                              "--base-url", server.base_url, "--cache", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out)
    assert [r["_line"] for r in rows] == [1, 2]
    assert [c["text"] for c in rows[0]["tasks"][0]["constraints"]] == ["Apologise once", "keep it under 80 words"]
    (failure,) = read_jsonl(tmp_path / "dec" / "decomposed.failed.jsonl")
    assert failure["line"] == 3 and "no instruction" in failure["reason"]
    # the decomposed file builds a database without any model call
    sent = server.count("/v1/chat/completions")
    res = runner.invoke(app, ["db", "build", str(out), "-o", str(tmp_path / "db"), "--cache", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    assert server.count("/v1/chat/completions") == sent
    db = ConstraintDB.load(tmp_path / "db")
    assert db.n_records == 2 and db.n_constraints == 4


def test_eval_decompose_reports_what_its_rows_say(tmp_path, server):
    gold = shared("ifeval_dev.jsonl")
    out = tmp_path / "eval.json"
    res = runner.invoke(app, ["eval", "decompose", str(gold), "--limit", "12", "--decomposer", "openai:tiny",
                              "--base-url", server.base_url, "-o", str(out), "--cache", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    m, rows = report["metrics"], report["rows"]
    assert m["rows"] == len(rows) == 12 and m["schema_valid"] + m["failed"] == 12
    exact = sum(1 for r in rows if r["predicted"] and
                sum(len(t["constraints"]) for t in r["predicted"]["tasks"]) == r["gold_count"])
    assert m["count_accuracy"] == pytest.approx(exact / 12)
    assert 0 < m["base_query_similarity_mean"] <= 1


def test_augment_refuses_bad_settings_before_any_call(tmp_path, server):
    res = runner.invoke(app, ["augment", "--seed", "x", "--inputs", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "r"),
                              "--db", str(tmp_path), "--hops", "0", "--base-url", server.base_url])
    assert res.exit_code == 2 and "hops" in res.output
    res = runner.invoke(app, ["augment", "--seed", "x", "-o", str(tmp_path / "r"), "--db", str(tmp_path)])
    assert res.exit_code == 2 and "--inputs" in res.output

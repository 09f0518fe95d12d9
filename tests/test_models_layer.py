"""The model layer: providers from the registry, typed specs whose every option reaches the
model, the served model's own template, two servers in one run, and the import contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ontask.cli.main import app
from ontask.models import ChatRequest, ModelSpec, PassRequest, PassResult, load_generator, load_scorer, register, unregister
from ontask.models.hf.scorer import load_hf_scorer
from ontask.models import ChatResult
from ontask.models.openai.chat import OpenAIChatGenerator
from ontask.testing.fake_server import FakeServer
from ontask.testing.tcia_handler import tcia_chat_handler

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"instruction": f"Summarise note {i} in one line.", "input": f"Note {i}: the launch moved to May.",
         "output": f"Launch moved to May ({i})."} for i in range(6)]
# A non-ChatML template (Llama-3-like headers, trims the content, a default system turn).
OTHER_TEMPLATE = (
    "<|begin|>system\nYou are helpful.<|end|>\n"
    "{% for m in messages %}<|begin|>{{ m['role'] }}\n{{ m['content'] | trim }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|begin|>assistant\n{% endif %}"
)


def write_rows(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- a provider is one module and one registry line -------------------------------------------
class EchoTinyProvider:
    """A test-only provider: `tinytest:ANY` scores and chats with the tiny model built in code."""

    name = "tinytest"
    options = frozenset({"batch_tokens"})
    model_dir: Path
    built: list[str] = []

    def scorer(self, spec, **settings):
        self.built.append(f"scorer:{spec.target}")
        s = load_hf_scorer(self.model_dir, name=spec.spec, identity={"model": spec.spec},
                           batch_tokens=spec.batch_tokens or settings.get("batch_tokens") or 2048)
        return s

    def generator(self, spec, **settings):
        from ontask.models.hf.generator import load_hf_generator

        self.built.append(f"generator:{spec.target}")
        return load_hf_generator(self.model_dir, name=spec.spec, identity={"model": spec.spec})


@pytest.fixture()
def tinytest(tiny_dir):
    EchoTinyProvider.model_dir, EchoTinyProvider.built = tiny_dir, []
    register("tinytest", EchoTinyProvider)
    yield EchoTinyProvider
    unregister("tinytest")


def test_a_registered_provider_scores_and_chats_through_the_cli(tmp_path, tinytest, tiny_scorer):
    src = write_rows(tmp_path / "rows.jsonl")
    res = runner.invoke(app, ["score", str(src), "-o", str(tmp_path / "scored.jsonl"), "--scorer", "tinytest:a",
                              "--metrics", "ppl", "--cache", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    want = tiny_scorer.score([PassRequest(f"{r['instruction']}\n\n{r['input']}", r["output"]) for r in ROWS])
    assert [round(r["lp"], 6) for r in rows] == [round(w.mean_logprob, 6) for w in want]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"instruction": "Reply to the customer. Keep it under 50 words."}) + "\n")
    res = runner.invoke(app, ["decompose", str(prompts), "-o", str(tmp_path / "d.jsonl"), "--decomposer", "tinytest:b",
                              "--cache", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    assert tinytest.built == ["scorer:a", "generator:b"]
    # an option the provider does not take is refused before anything loads
    res = runner.invoke(app, ["score", str(src), "-o", str(tmp_path / "x.jsonl"), "--scorer", "tinytest:a",
                              "--model-option", "scorer.device=cpu"])
    assert res.exit_code == 2 and "device" in res.output and "tinytest" in res.output
    assert tinytest.built == ["scorer:a", "generator:b"]


# -- specs: parsed, checked, every option delivered ---------------------------------------------
def test_misspelled_options_exit_2_naming_them(tmp_path):
    src = write_rows(tmp_path / "rows.jsonl")
    res = runner.invoke(app, ["score", str(src), "-o", str(tmp_path / "o.jsonl"), "--scorer", "openai:m",
                              "--model-option", "scorer.bse_url=http://127.0.0.1:9/v1"])
    assert res.exit_code == 2 and "unknown option 'bse_url' (did you mean base_url?)" in res.output
    cfg = tmp_path / "run.yaml"
    cfg.write_text("models:\n  judge: {spec: 'openai:m', concurency: 4}\n")
    res = runner.invoke(app, ["augment", "--seed", "x", "--inputs", str(src), "--db", str(tmp_path), "-o",
                              str(tmp_path / "run"), "--config", str(cfg)])
    assert res.exit_code == 2 and "models.judge: unknown option 'concurency' (did you mean concurrency?)" in res.output
    cfg.write_text("models:\n  jduge: {spec: 'openai:m'}\n")
    res = runner.invoke(app, ["augment", "--seed", "x", "--inputs", str(src), "--db", str(tmp_path), "-o",
                              str(tmp_path / "run"), "--config", str(cfg)])
    assert res.exit_code == 2 and "unknown role 'jduge'" in res.output
    res = runner.invoke(app, ["decompose", str(src), "-o", str(tmp_path / "d.jsonl"), "--decomposer", "hf:/x",
                              "--model-option", "mode=echo"])
    assert res.exit_code == 2 and "mode" in res.output and "hf" in res.output


def test_model_sets_every_role_and_role_flags_win():
    from ontask.tcia.config import AugmentConfig

    cfg = AugmentConfig(model="openai:big", judge="openai:judge", base_url="http://a/v1",
                        models={"responders": {"concurrency": 3}, "judge": {"base_url": "http://b/v1"}})
    roles = cfg.roles()
    assert {r: str(s) for r, s in roles.items()} == {
        "decomposer": "openai:big", "composer": "openai:big", "verifier": "openai:big", "judge": "openai:judge",
        "responder_0": "openai:big"}
    assert roles["judge"].base_url == "http://b/v1" and roles["composer"].base_url == "http://a/v1"
    assert roles["responder_0"].concurrency == 3 and roles["composer"].concurrency == 64
    with pytest.raises(ValueError, match="template"):
        AugmentConfig(models={"judge": {"spec": "openai:j", "template": "chatml"}})  # a scoring option on a chat role


def _served(tiny_dir, **kw):
    return FakeServer(model_dir=tiny_dir, **kw)


def check_base_url(tiny_dir, tmp_path, monkeypatch):
    with _served(tiny_dir) as srv:
        s = load_scorer(dict(spec="openai:tiny", base_url=srv.base_url))
        assert s.base_url == srv.base_url and isinstance(s.score([PassRequest("a", "b")])[0], PassResult)
        assert srv.count() == 1


def check_api_key_env(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-from-my-variable")
    with _served(tiny_dir) as srv:
        load_scorer(dict(spec="openai:tiny", base_url=srv.base_url, api_key_env="MY_KEY")).score([PassRequest("a", "b")])
        load_generator(dict(spec="openai:tiny", base_url=srv.base_url, api_key_env="MY_KEY")).chat(
            [ChatRequest.of([{"role": "user", "content": "hi"}])])
        assert {r["headers"]["Authorization"] for r in srv.requests} == {"Bearer sk-from-my-variable"}
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(ValueError, match="MY_KEY"):
        load_scorer(dict(spec="openai:tiny", base_url="http://127.0.0.1:9/v1", api_key_env="MY_KEY", template="chatml"))


def check_template(tiny_dir, tmp_path, monkeypatch):
    template = tmp_path / "t.jinja"
    template.write_text(OTHER_TEMPLATE)
    with _served(tiny_dir) as srv:
        s = load_scorer(dict(spec="openai:tiny", base_url=srv.base_url, template=str(template)))
        s.score([PassRequest("  hi ", "there")])
        sent = srv.requests[-1]["body"]["prompt"]
    assert sent == "<|begin|>system\nYou are helpful.<|end|>\n<|begin|>user\nhi<|end|>\n<|begin|>assistant\nthere"


def check_mode(tiny_dir, tmp_path, monkeypatch):
    with _served(tiny_dir) as srv:
        s = load_scorer(dict(spec="openai:tiny", base_url=srv.base_url, template=f"hf:{tiny_dir}", mode="prompt_logprobs"))
        assert isinstance(s.score([PassRequest("a", "b")])[0], PassResult)
        body = srv.requests[-1]["body"]
    assert isinstance(body["prompt"], list) and body["prompt_logprobs"] == 1  # token ids, vLLM's prompt log-probs


def check_concurrency(tiny_dir, tmp_path, monkeypatch):
    with _served(tiny_dir, latency=0.05) as srv:
        load_scorer(dict(spec="openai:tiny", base_url=srv.base_url, concurrency=2)).score(
            [PassRequest(f"q{i}", "a") for i in range(8)])
        assert srv.max_in_flight == 2


def check_timeout(tiny_dir, tmp_path, monkeypatch):
    with _served(tiny_dir, latency=1.0) as srv:
        s = load_scorer(dict(spec="openai:tiny", base_url=srv.base_url, timeout=0.2, max_retries=0))
        [res] = s.score([PassRequest("a", "b")])
    assert s.timeout == 0.2 and "timeout after 0.2s" in res.reason


def check_max_retries(tiny_dir, tmp_path, monkeypatch):
    with _served(tiny_dir, fail_rate_500=1.0) as srv:
        load_scorer(dict(spec="openai:tiny", base_url=srv.base_url, template="chatml", max_retries=2)).score(
            [PassRequest("a", "b")])
        assert srv.count() == 3


def check_structured(tiny_dir, tmp_path, monkeypatch):
    from pydantic import BaseModel

    from ontask.models import ChatRequest

    class Answer(BaseModel):
        text: str

    with FakeServer() as srv:
        g = load_generator(dict(spec="openai:tiny", base_url=srv.base_url, structured="prompt"))
        g.chat([ChatRequest.of([{"role": "user", "content": "hi"}], response_model=Answer)])
        body = srv.requests[-1]["body"]
    assert g.schema_in == "prompt" and "response_format" not in body and body["messages"][0]["role"] == "system"


def check_max_length(tiny_dir, tmp_path, monkeypatch):
    with _served(tiny_dir) as srv:
        s = load_scorer(dict(spec="openai:tiny", base_url=srv.base_url, max_length=8))
        [res] = s.score([PassRequest("a much longer question than eight tokens", "and its answer")])
    assert "too long" in res.reason and "maximum 8" in res.reason


@pytest.mark.parametrize("check", [check_base_url, check_api_key_env, check_template, check_mode, check_concurrency,
                                   check_timeout, check_max_retries, check_structured, check_max_length],
                         ids=lambda f: f.__name__.removeprefix("check_"))
def test_every_server_option_reaches_the_model(check, tiny_dir, tmp_path, monkeypatch):
    check(tiny_dir, tmp_path, monkeypatch)


def test_timeouts_of_a_server_that_queues_make_rate_control_back_off():
    """llama.cpp works one request at a time and lets the rest wait: they time out instead of
    being refused. Timeouts count as load, so the client halves what it sends."""
    import time as _time

    from ontask.models import ChatRequest
    from ontask.models.transport.retry import RetryPolicy

    def one_at_a_time(body):
        _time.sleep(0.1)  # blocks the server's loop: requests are answered in turn
        return "ok"

    with FakeServer(chat_handler=one_at_a_time) as srv:
        g = OpenAIChatGenerator("tiny", base_url=srv.base_url, concurrency=16, timeout=0.5,
                                retry=RetryPolicy(max_attempts=8, initial_wait=0.05, max_wait=0.2))
        out = g.chat([ChatRequest.of([{"role": "user", "content": f"q{i}"}]) for i in range(16)])
    assert g.rate_state.decreases >= 1 and g.rate_state.limit < 16
    assert sum(isinstance(o, ChatResult) for o in out) >= 12


def test_every_local_option_reaches_the_model(tiny_dir):
    import torch

    s = load_scorer(dict(spec=f"hf:{tiny_dir}", device="cpu", dtype="bf16", batch_tokens=256, max_length=100))
    assert next(s.model.parameters()).dtype == torch.bfloat16 and s.device.type == "cpu"
    assert (s.batch_tokens, s.max_length) == (256, 100)
    g = load_generator(dict(spec=f"hf:{tiny_dir}", device="cpu", dtype="fp32", batch_size=3, max_length=90))
    assert next(g.model.parameters()).dtype == torch.float32 and (g.batch_size, g.max_length) == (3, 90)
    # one weights load per process serves the scorer and the generator of one model
    assert load_generator(f"hf:{tiny_dir}").model is load_scorer(f"hf:{tiny_dir}").model
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            load_scorer(dict(spec=f"hf:{tiny_dir}", device="cuda"))
    assert ModelSpec(spec="hf:x", device="auto").device == "auto"
    with pytest.raises(ValueError):
        ModelSpec(spec="hf:x", device="tpu")


# -- the served model's own template ----------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["vllm", "llama.cpp"])
def test_server_scoring_uses_the_served_template(tiny_dir, tmp_path, endpoint):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["chat_template"] = OTHER_TEMPLATE
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    (other / "chat_template.jinja").unlink(missing_ok=True)
    local = load_hf_scorer(other)
    assert local.render_prompt("x").startswith("<|begin|>system")
    reqs = [PassRequest(f"  Question {i}? \n", f"Answer {i}.") for i in range(4)]
    with FakeServer(model_dir=tiny_dir, chat_template=OTHER_TEMPLATE, template_endpoint=endpoint) as srv:
        s = load_scorer(dict(spec="openai:tiny", base_url=srv.base_url))
        assert s.describe()["template_source"].startswith("server:")
        assert all(s.render_prompt(r.user) == local.render_prompt(r.user) for r in reqs)
        got, want = s.score(reqs), local.score(reqs)
    for g, w in zip(got, want):
        assert isinstance(g, PassResult) and (g.n_output, g.n_prompt) == (w.n_output, w.n_prompt)
        assert g.sum_logprob == pytest.approx(w.sum_logprob, abs=1e-4)


def test_a_server_that_cannot_apply_its_template_is_refused(tiny_dir, tmp_path):
    src = write_rows(tmp_path / "rows.jsonl")
    with FakeServer(model_dir=tiny_dir, chat_template=OTHER_TEMPLATE, template_endpoint=None) as srv:
        res = runner.invoke(app, ["score", str(src), "-o", str(tmp_path / "o.jsonl"), "--scorer", "openai:tiny",
                                  "--base-url", srv.base_url, "--cache", str(tmp_path / "c.sqlite")])
        assert srv.count() == 0  # nothing was scored through a guessed prompt
    assert res.exit_code == 2 and "cannot apply its chat template" in res.output and "template=hf:PATH" in res.output
    assert not (tmp_path / "o.jsonl").exists()


# -- servers: llama.cpp's structured form, two servers in one run --------------------------------
def test_json_schema_refused_with_500_falls_back_to_json_object():
    from pydantic import BaseModel

    from ontask.models import ChatRequest, ChatResult
    from ontask.models.transport.retry import RetryPolicy

    class Verdict(BaseModel):
        ok: bool
        why: str

    reqs = [ChatRequest.of([{"role": "user", "content": f"Is {i} fine?"}], response_model=Verdict) for i in range(3)]
    with FakeServer(reject_json_schema=500) as srv:
        g = OpenAIChatGenerator("tiny", base_url=srv.base_url, concurrency=1,
                                retry=RetryPolicy(max_attempts=6, initial_wait=0.01, max_wait=0.02))
        out = g.chat(reqs)
        first = [r["body"]["response_format"]["type"] for r in srv.requests if r["path"] == "/v1/chat/completions"]
        out += g.chat(reqs[:2])
        later = [r["body"]["response_format"]["type"] for r in srv.requests if r["path"] == "/v1/chat/completions"][len(first):]
    assert all(isinstance(o, ChatResult) and o.data is not None for o in out), out
    assert g.schema_in == "json_object"
    # each request tried json_schema at most once (never retried 6 times), then the form that works
    assert first.count("json_schema") <= len(reqs) and first.count("json_object") == len(reqs)
    assert later == ["json_object", "json_object"]


def test_two_roles_on_two_servers_in_one_augment(tmp_path):
    from test_augment import DATA, SEED, read_jsonl

    from ontask import api
    from ontask.embed import load_embedder
    from ontask.tcia.config import AugmentConfig
    from ontask.tcia.database import build_database
    from ontask.tcia.pipeline import Seed
    from ontask.tcia.sources import read_inputs

    emb = load_embedder("embedded", cache=api.open_cache(tmp_path / "c.sqlite"))
    db = build_database(read_jsonl(DATA / "demo_constraints.jsonl"), emb)
    with FakeServer(chat_handler=tcia_chat_handler) as a, FakeServer(chat_handler=tcia_chat_handler) as b:
        cfg = AugmentConfig(model="openai:tiny", base_url=a.base_url, models={"judge": {"base_url": b.base_url}},
                            hops=1, per_op=2, max_states=6, samples=3, inputs_per_instruction=1,
                            min_validity=1.0, min_consistency=1.0, on_task_decompose=False)
        manifest = api.augment(cfg, tmp_path / "run", seeds=[Seed(SEED)], inputs=read_inputs(DATA / "demo_inputs.jsonl"),
                               cache_path=tmp_path / "c.sqlite", db=db)
        judged_on_b = [r for r in b.requests if r["path"] == "/v1/chat/completions"]
        on_a = [r for r in a.requests if r["path"] == "/v1/chat/completions"]
    assert judged_on_b and on_a and manifest["funnel"]["composed"] > 0
    assert manifest["models"]["judge"]["base_url"] == b.base_url and manifest["models"]["composer"]["base_url"] == a.base_url


# -- architecture ---------------------------------------------------------------------------
def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "BROKEN" not in proc.stdout and "0 broken" in proc.stdout

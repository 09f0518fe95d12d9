"""ServerScorer against the fake OpenAI-compatible server, checked against the local HFScorer."""

from __future__ import annotations

import json
import time

import pytest

from ontask.models import load_scorer
from ontask.models.base import PassError, PassRequest, PassResult, build_user_turn
from ontask.models.hf.scorer import load_hf_scorer
from ontask.models.openai.scorer import ServerScorer, load_server_scorer
from ontask.testing.fake_server import FakeServer
from ontask.testing.tiny import CHAT_TEMPLATE, make_tiny_model

REQUESTS = [
    PassRequest("Summarise the meeting notes in three bullet points.", "- budget approved\n- launch in May\n- hire two"),
    PassRequest(build_user_turn("Translate the sentence into French.", "The weather is nice today."), "Il fait beau aujourd'hui."),
    PassRequest("", "The quick brown fox jumps over the lazy dog."),  # the empty prompt of IFD
    PassRequest("Write a haiku about autumn leaves.", "Leaves drift on the stream\nquiet water carries them\nautumn lets them go"),
    PassRequest("Réponds en français : ça va ?", "Oui, ça va très bien ! 日本語 🎉"),
    PassRequest(build_user_turn("Classify the review as positive or negative:", "I loved the product!"), "positive"),
    PassRequest("List the steps to reset a password.", "1. Open settings.\n2. Click 'Reset'.\n\n3. Done."),
    PassRequest("Reply to the customer.", "  leading and trailing spaces  "),
    PassRequest("Rewrite the email below.\n\nHi Bob,\nsee you.", "\nStarts with a newline."),
    PassRequest("Return JSON.", '{"items": [1, 2, 3], "ok": true}'),
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def hf(tiny_dir):
    return load_hf_scorer(tiny_dir)


@pytest.fixture(scope="module")
def server(tiny_dir):
    with FakeServer(model_dir=tiny_dir) as srv:
        yield srv


def assert_same(got, want, tol=1e-4):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if isinstance(w, PassError):
            assert isinstance(g, PassError), (g, w)
            continue
        assert isinstance(g, PassResult), g
        assert g.n_output == w.n_output and g.n_prompt == w.n_prompt, (g, w)
        assert g.sum_logprob == pytest.approx(w.sum_logprob, abs=tol), (g, w)


@pytest.mark.parametrize("mode", ["echo", "prompt_logprobs"])
def test_matches_local_scorer(server, hf, tiny_dir, mode):
    scorer = load_server_scorer("tiny", base_url=server.base_url, template=f"hf:{tiny_dir}", mode=mode)
    for r in REQUESTS:
        assert scorer.render_prompt(r.user) == hf.render_prompt(r.user)
    before = server.count()
    got = scorer.score(REQUESTS)
    assert all(isinstance(g, PassResult) for g in got), got
    assert_same(got, hf.score(REQUESTS))
    assert server.count() - before == len(REQUESTS)


def test_bundled_chatml_template_is_the_default(server, hf):
    from importlib import resources

    text = resources.files("ontask").joinpath("templates/chatml.jinja").read_text()
    assert text.rstrip("\n") == CHAT_TEMPLATE
    scorer = load_scorer("openai:tiny", base_url=server.base_url)  # through the registry, no template
    assert isinstance(scorer, ServerScorer) and scorer.name == "openai:tiny"
    assert all(scorer.render_prompt(r.user) == hf.render_prompt(r.user) for r in REQUESTS)
    assert_same(scorer.score(REQUESTS[:4]), hf.score(REQUESTS[:4]))


def test_boundary_merge(server, tiny_dir, tmp_path):
    """A template ending mid-word: echo mode refuses, prompt_logprobs splits exactly like HFScorer."""
    template = CHAT_TEMPLATE.replace("assistant\n{% endif %}", "assistant\nOk, th{% endif %}")
    path = tmp_path / "mid_word.jinja"
    path.write_text(template)
    reqs = [PassRequest("Say something.", "e quick brown fox")]
    echo = load_server_scorer("tiny", base_url=server.base_url, template=str(path))
    [res] = echo.score(reqs)
    assert isinstance(res, PassError) and "boundary" in res.reason
    exact = load_server_scorer("tiny", base_url=server.base_url, template=str(path), mode="prompt_logprobs", tokenizer=tiny_dir)
    ref = load_hf_scorer(tiny_dir)
    ref.tokenizer.chat_template = template
    assert exact.render_prompt("Say something.") == ref.render_prompt("Say something.")
    assert_same(exact.score(reqs), ref.score(reqs))


def test_server_errors_become_pass_errors_after_retries(tiny_dir):
    with FakeServer(model_dir=tiny_dir, fail_rate_500=1.0) as srv:
        scorer = ServerScorer("tiny", base_url=srv.base_url, max_retries=2)
        got = scorer.score(REQUESTS[:3])
        assert all(isinstance(g, PassError) and "500" in g.reason for g in got), got
        assert srv.count() == 3 * (1 + 2)


def test_rate_limits_are_retried(tiny_dir, hf):
    with FakeServer(model_dir=tiny_dir, fail_rate_429=0.3, retry_after=0.01, seed=1) as srv:
        scorer = ServerScorer("tiny", base_url=srv.base_url, template=f"hf:{tiny_dir}", max_retries=10)
        got = scorer.score(REQUESTS)
        assert_same(got, hf.score(REQUESTS))
        assert srv.count() > len(REQUESTS)  # some were refused and retried


def test_requests_run_concurrently(tiny_dir):
    reqs = [PassRequest(f"Question {i}?", f"Answer {i}.") for i in range(16)]
    with FakeServer(model_dir=tiny_dir, latency=0.2) as srv:
        t0 = time.perf_counter()
        got = ServerScorer("tiny", base_url=srv.base_url, concurrency=16).score(reqs)
        assert time.perf_counter() - t0 < 1.0
        assert all(isinstance(g, PassResult) for g in got)
        t0 = time.perf_counter()
        ServerScorer("tiny", base_url=srv.base_url, concurrency=2).score(reqs[:4])
        assert time.perf_counter() - t0 >= 0.38  # the semaphore bounds requests in flight


@pytest.mark.parametrize("mode", ["echo", "prompt_logprobs"])
def test_empty_output_is_a_pass_error(server, tiny_dir, mode):
    scorer = ServerScorer("tiny", base_url=server.base_url, template=f"hf:{tiny_dir}", mode=mode)
    got = scorer.score([PassRequest("Say hi.", ""), REQUESTS[0]])
    assert isinstance(got[0], PassError) and "no tokens" in got[0].reason
    assert isinstance(got[1], PassResult)


def test_too_long_and_unreachable(server, tiny_dir):
    long = PassRequest("word " * server.max_model_len, "still going")  # well over the context
    got = ServerScorer("tiny", base_url=server.base_url).score([long, REQUESTS[0]])
    assert isinstance(got[0], PassError) and "400" in got[0].reason and isinstance(got[1], PassResult)
    got = ServerScorer("tiny", base_url=server.base_url, template=f"hf:{tiny_dir}", mode="prompt_logprobs",
                       max_length=64).score([long])
    assert isinstance(got[0], PassError) and "too long" in got[0].reason
    dead = ServerScorer("tiny", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=5)
    [res] = dead.score([REQUESTS[0]])
    assert isinstance(res, PassError) and "unreachable" in res.reason


def test_count_tokens(server, hf, tiny_dir):
    remote = ServerScorer("tiny", base_url=server.base_url)
    local = ServerScorer("tiny", base_url=server.base_url, template=f"hf:{tiny_dir}")
    for text in ["Hello there!", "héllo 日本語 🎉\nline two", ""]:
        assert remote.count_tokens(text) == local.count_tokens(text) == hf.count_tokens(text)
    assert server.requests[-1]["path"] == "/tokenize"


def test_identity_has_no_secrets(server, tiny_dir, monkeypatch):
    monkeypatch.setenv("ONTASK_API_KEY", "sk-very-secret-key")
    a = ServerScorer("tiny", base_url=server.base_url)
    b = ServerScorer("tiny", base_url=server.base_url)
    c = ServerScorer("tiny", base_url=server.base_url, template=f"hf:{tiny_dir}", mode="prompt_logprobs")
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert "secret" not in json.dumps(a.describe()) + a.fingerprint
    d = ServerScorer("tiny", base_url=server.base_url.replace("http://", "http://user:pw@") + "?key=sk-x")
    assert "pw" not in json.dumps(d.describe()) and "sk-x" not in json.dumps(d.describe())
    with pytest.raises(ValueError, match="tokenizer"):
        ServerScorer("tiny", base_url=server.base_url, mode="prompt_logprobs")


def test_fake_server_echo_offsets_are_exact(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key="EMPTY")
    text = "<|im_start|>user\nça va 🎉<|im_end|>\n"
    resp = client.completions.create(model="tiny", prompt=[text, "abc"], echo=True, logprobs=2, max_tokens=0)
    lp = resp.choices[0].logprobs
    enc = server.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert lp.text_offset == [s for s, _ in enc["offset_mapping"]] and lp.token_logprobs[0] is None
    assert len(resp.choices) == 2 and resp.choices[1].text == "abc"
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_score_pipeline_through_server_equals_local(server, hf, tiny_dir, tmp_path):
    """`ontask score --scorer openai:...` gives the local scorer's scores, row for row."""
    from ontask.cache import ResultCache
    from ontask.scoring import ScoreConfig, run_score

    rows = [
        {"instruction": f"Summarise note {i} in {i % 3 + 1} points.", "input": "The budget meeting was long." if i % 2 else "",
         "output": f"Point {i}: budget, hiring."} for i in range(6)
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = ScoreConfig(metrics=["ppl", "ifd", "tss"], k=2)
    remote = load_server_scorer("tiny", base_url=server.base_url, template=f"hf:{tiny_dir}")
    with ResultCache(tmp_path / "a.sqlite") as ca, ResultCache(tmp_path / "b.sqlite") as cb:
        m_remote = run_score(src, tmp_path / "remote", cfg, scorer=remote, cache=ca)
        run_score(src, tmp_path / "local", cfg, scorer=hf, cache=cb)
    assert m_remote["counts"]["rows_scored"] == 6
    got = [json.loads(x) for x in (tmp_path / "remote" / "data.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in (tmp_path / "local" / "data.jsonl").read_text().splitlines()]
    for g, w in zip(got, want):
        for col in ("lp", "ppl", "ifd", "tss"):
            assert g[col] == pytest.approx(w[col], rel=1e-6, abs=1e-5)
        assert g["tss_top_alt"] == w["tss_top_alt"]


def test_a_concurrency_limited_server_is_found_by_rate_control(tiny_dir, hf):
    """Scoring through a server that refuses more than 6 at a time: AIMD finds the limit and
    every pass is computed, equal to the local scorer's; a fixed 32 in flight is refused far
    more often (the same policy retries both)."""
    reqs = [PassRequest(f"Question {i}: say something short.", f"Answer number {i}.") for i in range(200)]
    refused = {}
    for adaptive in (True, False):
        with FakeServer(model_dir=tiny_dir, latency=0.02, max_concurrent=6, retry_after=0.01) as srv:
            scorer = ServerScorer("tiny", base_url=srv.base_url, template=f"hf:{tiny_dir}", concurrency=32,
                                  retry={"max_attempts": 40, "initial_wait": 0.01, "max_wait": 0.05},
                                  rate={"adaptive": adaptive})
            got = scorer.score(reqs)
            refused[adaptive] = sum(1 for r in srv.requests if r["status"] == 429)
        assert_same(got, hf.score(reqs))
        if adaptive:
            assert scorer.rate_state.decreases >= 1 and scorer.rate_state.limit <= 10
    assert refused[True] * 4 < refused[False], refused


@pytest.mark.parametrize("mode", ["echo", "prompt_logprobs"])
def test_batch_mode_gives_the_online_scores(server, tiny_dir, mode, tmp_path):
    """`batch: true`: every pass's completions request goes as one line of a provider batch
    (no online completions request), and each pass's score equals the online one exactly."""
    online = load_server_scorer("tiny", base_url=server.base_url, template=f"hf:{tiny_dir}", mode=mode)
    batch = load_server_scorer("tiny", base_url=server.base_url, template=f"hf:{tiny_dir}", mode=mode, batch=True,
                               batch_log=tmp_path / "batches.jsonl", batch_settings={"poll_initial": 0.05})
    assert batch.fingerprint == online.fingerprint  # the same answers: one cache
    want = online.score(REQUESTS)
    before, batches_before = server.count(), server.count("/v1/batches")
    got = batch.score(REQUESTS)
    assert server.count() == before  # nothing went online
    assert server.count("/v1/batches") - batches_before == 1
    assert [type(g) for g in got] == [type(w) for w in want]
    for g, w in zip(got, want):
        if isinstance(w, PassResult):
            assert (g.sum_logprob, g.n_output, g.n_prompt) == (w.sum_logprob, w.n_output, w.n_prompt)


def test_score_cli_batch_flag_sends_every_pass_as_a_batch(server, tiny_dir, tmp_path, monkeypatch):
    """`ontask score --batch` with an openai: scorer: the same rows scored online and in
    batch mode; no online completions request in the batch run; equal scores."""
    import json as _json

    from typer.testing import CliRunner

    from ontask.cli.main import app

    monkeypatch.setenv("ONTASK_CACHE_DIR", str(tmp_path / "usercache"))  # the scorer's batch log
    rows = [{"instruction": r.user or "Say it.", "input": "", "output": r.output} for r in REQUESTS[:4]]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(_json.dumps(r) + "\n" for r in rows))
    common = ["score", str(src), "--metrics", "ppl", "--scorer", "openai:tiny", "--base-url", server.base_url,
              "--model-option", f"scorer.template=hf:{tiny_dir}"]
    online = CliRunner().invoke(app, [*common, "-o", str(tmp_path / "online.jsonl"), "--cache", str(tmp_path / "a.sqlite")])
    assert online.exit_code == 0, online.output
    before, batches = server.count(), server.count("/v1/batches")
    batch = CliRunner().invoke(app, [*common, "--batch", "-o", str(tmp_path / "batch.jsonl"),
                                     "--cache", str(tmp_path / "b.sqlite")])
    assert batch.exit_code == 0, batch.output
    assert server.count() == before and server.count("/v1/batches") == batches + 1
    assert (tmp_path / "batch.jsonl").read_bytes() == (tmp_path / "online.jsonl").read_bytes()

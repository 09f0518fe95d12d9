"""OpenAIChatGenerator over real HTTP against the fake OpenAI-compatible server (never a mock)."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import sys
import threading
import time
import uuid
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from ontask.models.base import ChatRequest, ChatResult, ChoiceRequest, ChoiceResult, GenError
from ontask.models.openai.chat import OpenAIChatGenerator, RetryPolicy, load_openai_generator
from ontask.testing.fake_server import (
    FakeError,
    FakeServer,
    chat_completion,
    default_chat_answer,
    first_token_distribution,
    request_digest,
)

CHAT = "/v1/chat/completions"
FAST = RetryPolicy(max_attempts=8, initial_wait=0.01, max_wait=0.05)


class Tag(BaseModel):
    label: str = Field(min_length=2, max_length=12)
    weight: float = Field(gt=0, le=1)


class Verdict(BaseModel):
    title: str = Field(max_length=40)
    score: int = Field(ge=1, le=5)
    kind: Literal["fact", "opinion"]
    passed: bool
    tags: list[Tag] = Field(min_length=1, max_length=3)
    note: str | None = None


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


def requests(n: int, schema_every: int = 2) -> list[ChatRequest]:
    return [ChatRequest.of(user(f"Describe item number {i} in a few words."),
                           response_model=Verdict if i % schema_every == 0 else None) for i in range(n)]


def gen(srv: FakeServer, **kw) -> OpenAIChatGenerator:
    kw.setdefault("retry", FAST)
    return OpenAIChatGenerator("tiny", base_url=srv.base_url, **kw)


def usage_of(body: dict, text: str) -> tuple[int, int]:
    u = chat_completion(body, text, "tiny")["usage"]
    return u["prompt_tokens"], u["completion_tokens"]


@pytest.fixture(scope="module")
def server():
    with FakeServer(latency=0.0) as srv:
        yield srv


def test_structured_and_plain_answers_are_valid_and_deterministic(server):
    reqs = requests(12)
    first = gen(server).chat(reqs)
    again = gen(server, concurrency=3).chat(reqs)
    assert first == again
    for req, out in zip(reqs, first):
        assert isinstance(out, ChatResult) and out.text.strip() and out.attempts == 1, out
        assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
        if req.response_model:
            assert Verdict.model_validate(out.data).model_dump(mode="json") == out.data and not out.repaired
        else:
            assert out.data is None
    bodies = [r["body"] for r in server.requests if r["path"] == CHAT][: len(reqs)]
    sent = {json.dumps(b["messages"]): b for b in bodies}
    for req in reqs:
        body = sent[json.dumps(list(req.messages))]
        assert body["seed"] == 0 and body["temperature"] == 0 and body["max_tokens"] == 512
        if req.response_model:
            rf = body["response_format"]
            assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is False
            assert rf["json_schema"]["schema"] == Verdict.model_json_schema()
        else:
            assert "response_format" not in body


class Node(BaseModel):
    kind: Literal["node"]
    when: datetime.datetime
    id: uuid.UUID
    span: tuple[int, float]
    labels: set[str] = Field(max_length=4)
    counts: dict[str, int]
    ratio: float = Field(ge=-1, lt=0)
    children: list["Node"] = Field(default_factory=list, max_length=2)
    parent: "Node | None" = None


def test_schema_instances_cover_pydantic_shapes():
    for model in (Verdict, Node):
        for i in range(100):
            body = {"messages": [{"role": "user", "content": f"case {i}"}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "V", "schema": model.model_json_schema()}}}
            model.model_validate_json(default_chat_answer(body))


def test_faults_are_retried_to_the_same_answers(server):
    reqs = requests(30, schema_every=3)
    clean = gen(server).chat(reqs)
    with FakeServer(fail_rate_500=0.15, fail_rate_429=0.15, fail_rate_bad_body=0.2, fail_rate_timeout=0.08,
                    retry_after=0.01, timeout_delay=5, seed=3) as srv:
        got = gen(srv, timeout=0.5, retry=RetryPolicy(max_attempts=12, initial_wait=0.01, max_wait=0.05)).chat(reqs)
        log = srv.requests
    assert [g.text for g in got] == [c.text for c in clean]
    assert [g.data for g in got] == [c.data for c in clean]
    faults = {r["fault"] for r in log}
    assert {"500", "429", "timeout", "bad_body:truncated", "bad_body:not_json", "bad_body:no_choices"} <= faults, faults
    assert sum(g.attempts for g in got) == len(log) and any(g.attempts > 1 for g in got)
    assert all(r["status"] is None for r in log if r["fault"] == "timeout")  # the client hung up first


def test_persistent_failures_end_as_gen_errors_naming_the_status():
    with FakeServer(fail_rate_500=1.0) as srv:
        out = gen(srv, retry=RetryPolicy(max_attempts=3, initial_wait=0.01, max_wait=0.02)).chat(requests(4))
        assert srv.count(CHAT) == 4 * 3
    for o in out:
        assert isinstance(o, GenError) and "500" in o.reason and "3 attempts" in o.reason and o.attempts == 3, o
    with FakeServer(fail_rate_bad_body=1.0) as srv:
        [o] = gen(srv, retry=RetryPolicy(max_attempts=2, initial_wait=0.01)).chat(requests(1))
    assert isinstance(o, GenError) and "broken response body" in o.reason and o.attempts == 2


def test_client_errors_are_not_retried(server):
    def refuse(body):
        raise FakeError(422, "messages too long for this model")

    with FakeServer(chat_handler=refuse) as srv:
        [o] = gen(srv).chat(requests(1))
        assert srv.count(CHAT) == 1
    assert isinstance(o, GenError) and "422" in o.reason and "too long" in o.reason and o.attempts == 1
    [o] = OpenAIChatGenerator("no-such-model", base_url=server.base_url, retry=FAST).chat(requests(1))
    assert isinstance(o, GenError) and "404" in o.reason


def test_retry_after_is_honoured():
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def limited(body):
        text = body["messages"][-1]["content"]
        with lock:
            seen[text] = seen.get(text, 0) + 1
            first = seen[text] == 1
        if first and "seconds" in text:
            raise FakeError(429, "slow down", {"Retry-After": "1"})
        if first and "millis" in text:
            raise FakeError(503, "busy", {"retry-after-ms": "400"})
        if "forever" in text:
            raise FakeError(429, "come back tomorrow", {"Retry-After": "86400"})
        return default_chat_answer(body)

    reqs = [ChatRequest.of(user(t)) for t in ("wait seconds", "wait millis", "wait forever")]
    with FakeServer(chat_handler=limited) as srv:
        out = gen(srv, retry=RetryPolicy(initial_wait=0.01, max_wait=0.02, max_retry_after=60)).chat(reqs)
        log = srv.requests
    assert [type(o) for o in out] == [ChatResult, ChatResult, GenError]
    assert "429" in out[2].reason and "86400" in out[2].reason and out[2].attempts == 1
    for text, wait in (("wait seconds", 1.0), ("wait millis", 0.4)):
        refused, answered = [r for r in log if r["body"]["messages"][-1]["content"] == text]
        assert refused["status"] in (429, 503) and answered["status"] == 200
        assert answered["received"] - refused["answered"] >= wait - 0.01


def test_invalid_json_is_re_asked_and_counted():
    calls: dict[str, int] = {}
    bad = 'Sure! {"title": "x", "score": 9'

    def flaky(body):
        key = body["messages"][1]["content"]
        calls[key] = calls.get(key, 0) + 1
        return bad if calls[key] == 1 else default_chat_answer(body)

    req = ChatRequest.of(user("Judge this."), response_model=Verdict)
    with FakeServer(chat_handler=flaky) as srv:
        [out] = gen(srv).chat([req])
        first, second = (r["body"] for r in srv.requests)
    assert isinstance(out, ChatResult) and out.attempts == 2, out
    Verdict.model_validate(out.data)
    assert second["messages"][:2] == list(req.messages)
    assert second["messages"][2] == {"role": "assistant", "content": bad}
    reask = second["messages"][3]
    assert reask["role"] == "user" and reask["content"].startswith("Your answer was not valid: ")
    assert "score" in reask["content"] and reask["content"].endswith("reply with only the JSON object")
    p1, c1 = usage_of(first, bad)
    p2, c2 = usage_of(second, out.text)
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (p1 + p2, c1 + c2)


def test_answers_that_stay_invalid_or_truncated_become_gen_errors():
    with FakeServer(chat_handler=lambda body: '{"title": "ok", "score": 7, "kind": "fact"}') as srv:
        [out] = gen(srv, max_reasks=2).chat([ChatRequest.of(user("Judge."), response_model=Verdict)])
        assert srv.count(CHAT) == 3
    assert isinstance(out, GenError) and "schema" in out.reason and "score" in out.reason and out.attempts == 3
    assert out.usage.completion_tokens > 0
    long_answer = json.dumps({"title": "a b c d e f g h", "score": 3, "kind": "fact", "passed": True, "tags": []})
    with FakeServer(chat_handler=lambda body: long_answer) as srv:
        [out] = gen(srv, max_reasks=1).chat([ChatRequest.of(user("Judge."), response_model=Verdict, max_tokens=4)])
    assert isinstance(out, GenError) and "truncated" in out.reason and out.attempts == 2
    with FakeServer(chat_handler=lambda body: "") as srv:
        [out] = gen(srv).chat([ChatRequest.of(user("Say something."))])
    assert isinstance(out, GenError) and "empty" in out.reason


def test_rejected_response_format_falls_back_to_the_prompt():
    reqs = requests(6, schema_every=1)
    with FakeServer(reject_response_format=True) as srv:
        strict = gen(srv, structured="response_format").chat(reqs[:1])
        assert isinstance(strict[0], GenError) and "400" in strict[0].reason and "response_format" in strict[0].reason
        g = gen(srv, concurrency=2)
        assert g.schema_in == "response_format"
        out = g.chat(reqs)
        assert g.schema_in == "prompt" and g.describe()["schema_in"] == "prompt"
        n_before = srv.count(CHAT)
        assert all(isinstance(o, ChatResult) for o in gen(srv, structured="prompt").chat(reqs[:2]))
        later = g.chat(reqs[:2])  # no more response_format attempts: one request each
        assert srv.count(CHAT) - n_before == 4
        log = srv.requests
    assert all(isinstance(o, ChatResult) for o in out + later), out
    for o in out + later:
        Verdict.model_validate(o.data)
    prompted = [r["body"] for r in log if r["status"] == 200]
    for body in prompted:
        assert "response_format" not in body and body["messages"][0]["role"] == "system"
        system = body["messages"][0]["content"]
        assert system.startswith("You are terse.") and json.dumps(Verdict.model_json_schema()) in system


def test_choice_probs_are_the_servers_top_logprobs(server):
    reqs = [ChoiceRequest.of(user(f"Rate answer {i} from 1 to 5.")) for i in range(6)]
    got = gen(server).choice_probs(reqs)
    bodies = {json.dumps(r["body"]["messages"]): r["body"] for r in server.requests if r["path"] == CHAT}
    for req, res in zip(reqs, got):
        body = bodies[json.dumps(list(req.messages))]
        assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
        assert body["temperature"] == 0
        answer = default_chat_answer(body)
        dist = first_token_distribution(answer, request_digest(body))
        mass = {d: dist[d] + dist.get(" " + d, 0.0) for d in "12345"}  # "4" and " 4" both count
        total = sum(mass.values())
        assert isinstance(res, ChoiceResult), res
        assert res.mass == pytest.approx(total, abs=1e-12)
        assert res.probs == pytest.approx({d: m / total for d, m in mass.items()}, abs=1e-12)
        assert max(res.probs, key=res.probs.get) == answer[0]
        assert res.usage.completion_tokens == 1
    assert gen(server).choice_probs(reqs) == got  # deterministic
    with FakeServer(chat_handler=lambda body: "The answer is yes") as srv:
        [res] = gen(srv).choice_probs(reqs[:1])
        assert isinstance(res, GenError) and "none of the choices" in res.reason
    with FakeServer(chat_handler=lambda body: "") as srv:
        [res] = gen(srv).choice_probs(reqs[:1])
        assert isinstance(res, GenError) and "no logprobs" in res.reason


def test_concurrency_bound_and_on_result():
    reqs = requests(24)
    seen: list[tuple[int, object]] = []
    with FakeServer(latency=0.05) as srv:
        t0 = time.perf_counter()
        out = gen(srv, concurrency=4).chat(reqs, on_result=lambda i, o: seen.append((i, o)))
        elapsed = time.perf_counter() - t0
        assert srv.max_in_flight == 4
    assert elapsed >= 24 / 4 * 0.05 - 0.01
    assert sorted(i for i, _ in seen) == list(range(24))
    assert all(out[i] is o for i, o in seen)


def test_works_inside_a_running_loop_and_on_result_errors_surface(server):
    async def inside() -> list:
        return gen(server).chat(requests(3))

    assert all(isinstance(o, ChatResult) for o in asyncio.run(inside()))

    def boom(i, o):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        gen(server).chat(requests(3), on_result=boom)


def test_no_secrets_in_identity_or_errors(server, monkeypatch):
    secret = "sk-very-secret-key-123"

    def leak(body):
        raise FakeError(401, f"Incorrect API key provided: {secret}")

    with FakeServer(chat_handler=leak) as srv:
        [o] = gen(srv, api_key=secret).chat(requests(1))
    assert isinstance(o, GenError) and "401" in o.reason and secret not in o.reason
    monkeypatch.setenv("ONTASK_API_KEY", secret)
    a = gen(server)
    b = load_openai_generator("tiny", base_url=server.base_url.replace("http://", "http://user:pw@") + "?key=sk-x")
    assert a.fingerprint == b.fingerprint != gen(server, structured="prompt").fingerprint
    text = json.dumps(a.describe()) + json.dumps(b.describe()) + a.fingerprint
    assert "secret" not in text and "pw" not in text and "sk-x" not in text
    monkeypatch.setenv("ONTASK_BASE_URL", server.base_url)
    assert OpenAIChatGenerator("tiny").describe()["base_url"] == server.base_url
    dead = OpenAIChatGenerator("tiny", base_url="http://127.0.0.1:9/v1", retry=RetryPolicy(max_attempts=2, initial_wait=0.01))
    [o] = dead.chat(requests(1))
    assert isinstance(o, GenError) and "unreachable" in o.reason and o.attempts == 2


def test_cli_serves_in_its_own_process_and_logs_jsonl(tmp_path):
    log_path = tmp_path / "requests.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "ontask.testing.fake_server", "--port", "0", "--latency", "0.01",
                             "--log", str(log_path), "--fail-rate-500", "0.3", "--seed", "1", "--model-name", "tiny,tiny-b",
                             "--chat-handler", "ontask.testing.fake_server:default_chat_answer"],
                            stdout=subprocess.PIPE, text=True)
    try:
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        out = OpenAIChatGenerator("tiny", base_url=base_url, retry=FAST).chat(requests(2))
        out += OpenAIChatGenerator("tiny-b", base_url=base_url, retry=FAST).chat(requests(2))
        assert all(isinstance(o, ChatResult) for o in out)
        lines = [json.loads(x) for x in log_path.read_text().splitlines()]  # flushed as answered
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
    assert len(lines) == sum(o.attempts for o in out) and {r["path"] for r in lines} == {CHAT}
    assert {(r["status"], r["fault"]) for r in lines} == {(200, None), (500, "500")}

"""Provider batch APIs over real HTTP against the fake server's Files and Batches endpoints:
answers equal the online endpoint's, limits split batches, failures and expiry are sent
again (only those), a run killed with a batch pending resumes it without creating another."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from ontask.models.openai.batch import BatchClient, BatchLog, BatchSettings, run_batches, split, input_file
from ontask.testing.fake_server import FakeServer
from test_augment import DATA, SEED  # the same seed and inputs

FAST = BatchSettings(poll_initial=0.05, poll_max=0.2)
ENDPOINT = "/v1/chat/completions"


def chat_requests(n: int) -> dict[str, dict]:
    return {f"req-{i}": {"model": "tiny", "messages": [{"role": "user", "content": f"Question number {i}?"}],
                         "max_tokens": 16} for i in range(n)}


def online(srv: FakeServer, body: dict) -> dict:
    import urllib.request

    req = urllib.request.Request(srv.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def batches_created(srv: FakeServer) -> list[list[str]]:
    """custom_ids of each batch the server created, in order."""
    return [r["body"]["custom_ids"] for r in srv.requests if r["path"] == "/v1/batches" and r["status"] == 200]


def run(srv: FakeServer, requests: dict, log_path, settings: BatchSettings = FAST):
    return asyncio.run(run_batches(BatchClient(srv.base_url), ENDPOINT, requests, BatchLog(log_path), settings))


def test_a_batch_answers_what_the_online_endpoint_answers(tmp_path):
    reqs = chat_requests(5)
    with FakeServer(batch_delay=0.3) as srv:
        out = run(srv, reqs, tmp_path / "batches.jsonl")
        assert out.failures == {}
        for cid, body in reqs.items():
            assert out.results[cid]["choices"][0]["message"] == online(srv, body)["choices"][0]["message"]
        assert batches_created(srv) == [list(reqs)]
        polls = [r for r in srv.requests if r["path"].startswith("/v1/batches/")]
        assert len(polls) >= 2  # it was in progress at least once, then ended
    events = [json.loads(line)["event"] for line in (tmp_path / "batches.jsonl").read_text().splitlines()]
    assert events[0] == "created" and events[-1] == "state"


def test_limits_split_requests_into_batches(tmp_path):
    reqs = chat_requests(5)
    lines = input_file(reqs, ENDPOINT)
    assert [len(c) for c in split(lines, 2, 10**9)] == [2, 2, 1]
    one = len(lines[0][1])
    assert [len(c) for c in split(lines, 100, 2 * one + 1)] == [2, 2, 1]
    with FakeServer() as srv:
        out = run(srv, reqs, tmp_path / "b.jsonl", FAST.model_copy(update={"max_requests": 2}))
        assert len(out.results) == 5
        assert batches_created(srv) == [["req-0", "req-1"], ["req-2", "req-3"], ["req-4"]]


def test_only_requests_that_failed_inside_a_batch_are_sent_again(tmp_path):
    reqs = chat_requests(12)
    with FakeServer(batch_fail_rate=0.4, batch_fail_once=True) as srv:
        out = run(srv, reqs, tmp_path / "b.jsonl")
        created = batches_created(srv)
    assert out.failures == {} and len(out.results) == 12
    assert len(created) == 2 and created[0] == list(reqs)
    failed_first = set(created[1])
    assert 0 < len(failed_first) < 12  # exactly those, once


def test_requests_out_of_attempts_fail_with_the_providers_reason(tmp_path):
    reqs = chat_requests(12)
    with FakeServer(batch_fail_rate=0.4) as srv:  # the same requests fail in every batch
        out = run(srv, reqs, tmp_path / "b.jsonl", FAST.model_copy(update={"max_attempts": 2}))
        created = batches_created(srv)
    assert len(created) == 2
    assert set(out.failures) == set(created[1]) and len(out.results) == 12 - len(out.failures)
    for reason in out.failures.values():
        assert reason.startswith("server_error: injected failure inside the batch (batch ") and "2 batches" in reason


def test_an_expired_batch_resends_only_its_unanswered_half(tmp_path):
    reqs = chat_requests(6)
    with FakeServer(batch_expire=1) as srv:
        out = run(srv, reqs, tmp_path / "b.jsonl")
        created = batches_created(srv)
    assert len(out.results) == 6 and out.failures == {}
    assert created == [list(reqs), ["req-3", "req-4", "req-5"]]


def test_model_refusals_are_final_failures_with_the_servers_words(tmp_path):
    reqs = {"ok": chat_requests(1)["req-0"], "bad": {"model": "nope", "messages": [{"role": "user", "content": "x"}]}}
    with FakeServer() as srv:
        out = run(srv, reqs, tmp_path / "b.jsonl")
        assert len(batches_created(srv)) == 1  # a 404 is not sent again
    assert set(out.results) == {"ok"}
    assert out.failures["bad"].startswith("404: The model `nope` does not exist.")


def test_a_run_killed_with_a_batch_pending_resumes_it_and_creates_no_other(tmp_path):
    reqs = chat_requests(4)
    log = tmp_path / "b.jsonl"
    with FakeServer(batch_delay=3.0) as srv:
        script = (
            "import asyncio, json, sys\n"
            "from ontask.models.openai.batch import BatchClient, BatchLog, BatchSettings, run_batches\n"
            f"reqs = json.loads({json.dumps(json.dumps(reqs))})\n"
            f"asyncio.run(run_batches(BatchClient({srv.base_url!r}), {ENDPOINT!r}, reqs, BatchLog({str(log)!r}),"
            " BatchSettings(poll_initial=0.05, poll_max=0.2)))\n"
        )
        child = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 60
        while not (log.exists() and '"created"' in log.read_text()) and time.time() < deadline:
            time.sleep(0.02)
        child.kill()  # SIGKILL while the batch is pending
        child.wait(30)
        assert len(batches_created(srv)) == 1
        out = run(srv, reqs, log)
        assert len(out.results) == 4 and out.failures == {}
        assert len(batches_created(srv)) == 1  # polled again, never created again
        uploads = [r["body"]["custom_ids"] for r in srv.requests if r["path"] == "/v1/files" and r["status"] == 200]
        assert uploads == [list(reqs)]


def test_a_cancelled_batch_fails_its_requests_for_good(tmp_path):
    reqs = chat_requests(3)
    log = BatchLog(tmp_path / "b.jsonl")

    async def go():
        client = BatchClient(srv.base_url)
        task = asyncio.create_task(run_batches(client, ENDPOINT, reqs, log, FAST))
        while not log.batches():
            await asyncio.sleep(0.02)
        async with client.session() as http:
            await client.cancel(http, next(iter(log.batches())))
        return await task

    with FakeServer(batch_delay=5.0) as srv:
        out = asyncio.run(go())
        assert len(batches_created(srv)) == 1
    assert out.results == {} and set(out.failures) == set(reqs)
    assert all(r.startswith("batch_cancelled: the batch was cancelled") for r in out.failures.values())


def test_vllm_run_batch_output_is_read_as_vllm_writes_it(tmp_path):
    """Lines shaped as vLLM's `run_batch` writes them (BatchRequestOutput.model_dump_json):
    one output file, successes with a ChatCompletionResponse body, errors with status 400,
    no body and `error` a string or an ErrorResponse."""
    from ontask.models.openai.batch import read_answers

    body = {"id": "chatcmpl-9f2", "object": "chat.completion", "created": 1733560000, "model": "qwen",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!", "refusal": None,
                                                  "annotations": None, "audio": None, "function_call": None,
                                                  "tool_calls": [], "reasoning_content": None},
                         "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
            "service_tier": None, "system_fingerprint": None,
            "usage": {"prompt_tokens": 12, "total_tokens": 14, "completion_tokens": 2, "prompt_tokens_details": None},
            "prompt_logprobs": None, "kv_transfer_params": None}
    lines = [
        {"id": "vllm-1", "custom_id": "a", "response": {"status_code": 200, "request_id": "vllm-batch-1", "body": body},
         "error": None},
        {"id": "vllm-2", "custom_id": "b", "response": {"status_code": 400, "request_id": "vllm-batch-2", "body": None},
         "error": "Request must not be sent in stream mode"},
        {"id": "vllm-3", "custom_id": "c", "response": {"status_code": 400, "request_id": "vllm-batch-3", "body": None},
         "error": {"error": {"message": "max_tokens is too large", "type": "BadRequestError", "param": None,
                             "code": 400}}},
    ]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    answers = read_answers(data)
    assert answers["a"] == (body, None, False)
    assert answers["b"] == (None, "400: Request must not be sent in stream mode", False)
    assert answers["c"] == (None, "400: max_tokens is too large", False)
    # and the input file ontask writes is what vLLM's BatchRequestInput reads
    line = json.loads(input_file({"a": {"model": "qwen", "messages": []}}, ENDPOINT)[0][1])
    assert line == {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "qwen", "messages": []}}


def test_a_logged_batch_the_provider_does_not_know_is_sent_again(tmp_path):
    reqs = chat_requests(2)
    log = tmp_path / "b.jsonl"
    with FakeServer() as first:
        run(first, reqs, log)
    with FakeServer() as second:  # a new server: the logged batch id means nothing here
        out = run(second, reqs, log)
        assert len(out.results) == 2 and len(batches_created(second)) == 1


def test_augment_with_every_server_role_in_batch_mode_writes_what_online_mode_writes(tmp_path, db, embedder,
                                                                                      monkeypatch):
    from ontask.cache import ResultCache
    from ontask.tcia.config import AugmentConfig
    from ontask.tcia.pipeline import Roles, Seed, run_augment
    from ontask.tcia.sources import read_inputs
    from ontask.testing.tcia_handler import tcia_chat_handler

    monkeypatch.setenv("ONTASK_CACHE_DIR", str(tmp_path / "user-cache"))  # where batch logs go

    def augment(out, batch: bool) -> dict:
        roles_opts = {r: {"spec": "openai:tiny", "batch": batch} for r in ("decomposer", "composer", "verifier", "judge")}
        cfg = AugmentConfig(decomposer="openai:tiny", composer="openai:tiny", verifier="openai:tiny",
                            judge="openai:tiny", responders=["openai:tiny"], base_url=srv.base_url,
                            models={**roles_opts, "responders": {"batch": batch}}, concurrency=8,
                            hops=2, per_op=4, max_states=30, samples=8, inputs_per_instruction=2, seed=3,
                            min_validity=3.0, min_consistency=3.0)  # 8 samples: some must pass
        roles = Roles(cfg, ResultCache(out / "cache.sqlite"))
        return run_augment([Seed(SEED)], read_inputs(DATA / "demo_inputs.jsonl"), cfg, out / "run", db=db,
                           embedder=embedder, roles=roles)

    with FakeServer(chat_handler=tcia_chat_handler) as srv:
        online_run = augment(tmp_path / "online", batch=False)
        n_online = srv.count("/v1/chat/completions")
        batch_run = augment(tmp_path / "batch", batch=True)
        assert srv.count("/v1/chat/completions") == n_online  # batch mode sent no online request
        created = batches_created(srv)
    assert created and sum(len(c) for c in created) >= batch_run["funnel"]["kept"]
    for name in ("data.jsonl", "instructions.jsonl", "failed.jsonl"):
        assert (tmp_path / "batch" / "run" / name).read_bytes() == (tmp_path / "online" / "run" / name).read_bytes(), name
    assert batch_run["funnel"] == online_run["funnel"] and online_run["funnel"]["kept"] > 0
    assert batch_run["models"]["judge"]["batch"]["log"].endswith(".jsonl")


def test_vllm_offline_runner_through_a_folder(tmp_path):
    """`base_url: file:///folder`: ontask writes the input file vLLM's run_batch reads, waits
    while the output is partial (vLLM streams lines), and reads answers and errors from it."""
    from ontask.models.openai.batch import FolderBatches
    from ontask.testing.fake_server import chat_completion

    folder = tmp_path / "vllm"
    reqs = chat_requests(3)
    log = BatchLog(tmp_path / "b.jsonl")

    def vllm_line(request: dict, n: int) -> dict:
        if n == 2:  # an error as run_batch writes it
            return {"id": f"vllm-{n}", "custom_id": request["custom_id"],
                    "response": {"status_code": 400, "request_id": f"vllm-batch-{n}", "body": None},
                    "error": "prompt is too long"}
        body = chat_completion(request["body"], f"answer {n}", "tiny")
        return {"id": f"vllm-{n}", "custom_id": request["custom_id"],
                "response": {"status_code": 200, "request_id": f"vllm-batch-{n}", "body": body}, "error": None}

    async def go():
        task = asyncio.create_task(run_batches(FolderBatches(folder), ENDPOINT, reqs, log, FAST))
        while not list(folder.glob("batch-*.input.jsonl")):
            await asyncio.sleep(0.02)
        src = next(folder.glob("batch-*.input.jsonl"))
        lines = [json.loads(x) for x in src.read_text().splitlines()]
        assert [x["custom_id"] for x in lines] == list(reqs) and {x["url"] for x in lines} == {ENDPOINT}
        rows = [vllm_line(x, n) for n, x in enumerate(lines)]
        out = src.with_name(src.name.replace(".input.", ".output."))
        out.write_text(json.dumps(rows[0]) + "\n")  # the runner is still going
        await asyncio.sleep(0.4)
        assert not task.done()
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return await task

    out = asyncio.run(go())
    assert out.results["req-0"]["choices"][0]["message"]["content"] == "answer 0"
    assert set(out.results) == {"req-0", "req-1"}
    assert out.failures["req-2"].startswith("400: prompt is too long (batch batch-")


def test_augment_batch_killed_while_pending_resumes_without_creating_a_batch_twice(tmp_path, db):
    """`ontask augment --batch` in its own process, SIGKILLed once its first batch exists;
    the rerun polls that batch instead of creating it again, sends no answered request
    again, completes; `ontask batches RUN` lists the run's batches, all completed."""
    from collections import Counter

    from typer.testing import CliRunner

    from ontask.cli.main import app
    from test_augment import _augment_cmd, read_jsonl

    db_dir = tmp_path / "db"
    db.save(db_dir)
    env = {**os.environ, "ONTASK_CACHE_DIR": str(tmp_path / "usercache")}
    log = tmp_path / "server.log"
    server = subprocess.Popen([sys.executable, "-m", "ontask.testing.fake_server", "--chat-handler", "tcia",
                               "--batch-delay", "0.5", "--log", str(log)], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        run_dir = tmp_path / "run"
        cmd = [*_augment_cmd(run_dir, tmp_path / "run.sqlite", db_dir, url), "--batch"]
        victim = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        batches = run_dir / "batches.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (batches.exists() and '"created"' in batches.read_text()):
            time.sleep(0.02)
        victim.kill()
        victim.wait(30)
        assert not (run_dir / "data.jsonl").exists()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        server.kill()
    entries = read_jsonl(log)
    created = [e["body"]["custom_ids"] for e in entries if e["path"] == "/v1/batches" and e["status"] == 200]
    sent = Counter(cid for ids in created for cid in ids)
    assert created and max(sent.values()) == 1  # no request in two batches: nothing created twice or re-sent
    assert not [e for e in entries if e["path"] == "/v1/chat/completions"]  # every call went as a batch
    assert len(read_jsonl(run_dir / "data.jsonl")) > 0
    listed = CliRunner().invoke(app, ["batches", str(run_dir)], env={"COLUMNS": "250"})  # no cell wraps
    assert listed.exit_code == 0, listed.output
    ids = [r["batch_id"] for r in map(json.loads, (run_dir / "batches.jsonl").read_text().splitlines())
           if r["event"] == "created"]
    assert len(ids) == len(created)
    for batch_id in ids:
        assert batch_id in listed.output
    assert listed.output.count("completed") == len(ids)


def test_batch_prices_are_the_discounted_share_of_the_online_ones():
    from ontask.models.spec import ModelSpec

    online = ModelSpec(spec="openai:x", input_price=2.0, output_price=4.0)
    assert online.cost(1_000_000, 1_000_000) == 6.0
    assert online.model_copy(update={"batch": True}).cost(1_000_000, 1_000_000) == 3.0  # the default half
    assert ModelSpec(spec="openai:x", input_price=2.0, output_price=4.0, batch=True,
                     batch_price_factor=0.4).cost(1_000_000, 1_000_000) == pytest.approx(2.4)


def test_augment_batch_failures_are_resent_alone_then_recorded_with_the_providers_reason(tmp_path, db, embedder,
                                                                                         monkeypatch):
    import hashlib
    from collections import Counter

    from ontask.cache import ResultCache
    from ontask.tcia.config import AugmentConfig
    from ontask.tcia.pipeline import Roles, Seed, run_augment
    from ontask.tcia.sources import read_inputs
    from ontask.testing.tcia_handler import tcia_chat_handler

    monkeypatch.setenv("ONTASK_CACHE_DIR", str(tmp_path / "user-cache"))
    rate = 0.15
    with FakeServer(chat_handler=tcia_chat_handler, batch_fail_rate=rate) as srv:
        cfg = AugmentConfig(decomposer="openai:tiny", composer="openai:tiny", verifier="openai:tiny",
                            judge="openai:tiny", responders=["openai:tiny"], base_url=srv.base_url, batch=True,
                            hops=2, per_op=4, max_states=30, samples=8, inputs_per_instruction=2, seed=3,
                            min_validity=3.0, min_consistency=3.0)  # 8 samples: some must pass
        run_augment([Seed(SEED)], read_inputs(DATA / "demo_inputs.jsonl"), cfg, tmp_path / "run", db=db,
                    embedder=embedder, roles=Roles(cfg, ResultCache(tmp_path / "c.sqlite")))
        created = batches_created(srv)
    fails = {cid for ids in created for cid in ids
             if int.from_bytes(hashlib.sha256(cid.encode()).digest()[:4], "big") / 2**32 < rate}
    sent = Counter(cid for ids in created for cid in ids)
    assert fails and {cid for cid, n in sent.items() if n > 1} == fails  # only the failed ones went again
    assert all(sent[cid] == 3 for cid in fails)  # max_attempts batches each, then given up
    failed = [json.loads(x) for x in (tmp_path / "run" / "failed.jsonl").read_text().splitlines()]
    reasons = [f["reason"] for f in failed if "batch:" in f["reason"]]
    assert reasons and all("server_error: injected failure inside the batch" in r and "3 batches" in r for r in reasons)


def test_batch_without_a_server_role_is_refused_before_anything_loads():
    from ontask.scoring.config import ScoreConfig
    from ontask.tcia.config import AugmentConfig

    with pytest.raises(ValueError, match="no role here is a server"):
        ScoreConfig(batch=True)  # the embedded scorer: nothing to batch
    with pytest.raises(ValueError, match="no role here is a server"):
        AugmentConfig(batch=True)
    assert ScoreConfig(batch=True, scorer="openai:x", base_url="http://127.0.0.1:9/v1").spec_for("scorer").batch

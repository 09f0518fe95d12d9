"""`ontask augment` end to end against the fake OpenAI-compatible server on 127.0.0.1.

The server answers every role deterministically (ontask.testing.tcia_handler), so the
funnel can be checked row for row; a second run injects faults; a third is killed with
SIGKILL half-way and resumed, and must write what an uninterrupted run writes without
sending an answered call twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from importlib.resources import files
from pathlib import Path


from ontask.cache import ResultCache
from ontask.tcia.config import AugmentConfig
from ontask.tcia.pipeline import Roles, Seed, run_augment
from ontask.tcia.sources import read_inputs
from ontask.testing.fake_server import FakeServer
from ontask.testing.tcia_handler import tcia_chat_handler

DATA = Path(str(files("ontask") / "data"))
SEED = ("Reply to the customer's message below as a Brightleaf Home support agent. Apologise once, "
        "give one concrete next step, and keep the reply under 120 words.")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _config(base_url: str, **kw) -> AugmentConfig:
    base = dict(decomposer="openai:tiny", composer="openai:tiny", verifier="openai:tiny", judge="openai:tiny",
                responders=["openai:tiny", "openai:tiny-b"], base_url=base_url, concurrency=64, hops=3, per_op=10,
                max_states=300, samples=60, inputs_per_instruction=2, seed=7,
                min_validity=3.5, min_consistency=3.5)  # the fake judge spreads its digits: means sit near 3.5
    return AugmentConfig(**{**base, **kw})


def _run(tmp_path, server, db, embedder, **kw):
    cfg = _config(server.base_url, **kw)
    cache = ResultCache(tmp_path / "cache.sqlite")
    roles = Roles(cfg, cache)
    inputs = read_inputs(DATA / "demo_inputs.jsonl")
    manifest = run_augment([Seed(SEED)], inputs, cfg, tmp_path / "run", db=db, embedder=embedder, roles=roles)
    return manifest, tmp_path / "run"


def test_funnel_adds_up_row_for_row(tmp_path, db, embedder):
    with FakeServer(chat_handler=tcia_chat_handler, model_name=("tiny", "tiny-b")) as server:
        manifest, run = _run(tmp_path, server, db, embedder)
    f = manifest["funnel"]
    states = read_jsonl(run / "instructions.jsonl")
    data = read_jsonl(run / "data.jsonl")
    status = Counter(s["status"] for s in states)
    # the search: K unique states, k sampled, T and Q fixed, no duplicates
    assert f["states_explored"] == len(states) == 300
    assert len({s["state_hash"] for s in states}) == 300
    assert {(s["task_type"], s["base_query"]) for s in states} == {(manifest["seeds"][0]["state"]["task_type"],
                                                                    manifest["seeds"][0]["state"]["base_query"])}
    assert f["sampled"] == 60 and status["not_sampled"] == 240
    # every stage = the previous one minus its drops, and the drops are the rows' statuses
    d = f["drops"]
    assert f["composed"] == f["sampled"] - d["compose_failed"]
    assert f["verified"] == f["composed"] - d["verify_failed"] - d["unverified"]
    assert f["unique"] == f["verified"] - d["duplicate"]
    assert f["valid"] == f["unique"] - d["validity_failed"] - d["invalid"] == status["valid"]
    assert d["unverified"] == status["unverified"] > 0  # the scripted verifier finds gaps now and then
    assert d["invalid"] == status["invalid"] > 0
    assert f["paired"] == 2 * f["valid"] == sum(s["pairs"] for s in states)
    assert f["answered"] == f["paired"] - d["unanswered"] - d["check_failed"]
    assert f["kept"] == f["answered"] - d["below_floor"] == len(data) == sum(s["kept_rows"] for s in states)
    # answers that break a code-checkable constraint never reach the judge; each is recorded
    checked = read_jsonl(run / "failed.jsonl")
    by_hash = {s["state_hash"]: s for s in states}
    for c in checked:
        assert c["stage"] == "check" and c["reason"].startswith("violates '")
        named = c["reason"].split("'")[1]
        assert named in [x["text"] for x in by_hash[c["state_hash"]]["constraints"]]
    assert manifest["failures"] == len(checked)
    # rows carry lineage and real scores; the best of the two responders was kept
    valid = {s["state_hash"]: s for s in states if s["status"] == "valid"}
    for row in data:
        assert row["state_hash"] in valid and row["instruction"] == valid[row["state_hash"]]["instruction"]
        assert row["response"].strip() and row["model"] in ("openai:tiny", "openai:tiny-b")
        assert 1 <= row["judge_mean"] <= 5 and 1 <= len(row["candidates"]) <= 2
        assert len(row["constraint_checks"]) == len(row["constraints"]) and False not in row["constraint_checks"]
        assert row["judge_mean"] == max(c["judge_mean"] for c in row["candidates"])
        assert row["hop"] == len(row["edit_path"]) >= 1
    div = manifest["diversity"]["verified"]
    assert set(div) >= {"1", "2", "3", "all"} and all(0 < v < 1 for v in div.values() if v is not None)
    assert manifest["on_task"]["all"]["judged"] == f["unique"]


def test_faults_are_recorded_never_papered_over(tmp_path, db, embedder):
    faults = dict(fail_rate_500=0.05, fail_rate_429=0.05, fail_rate_bad_body=0.02, fail_rate_timeout=0.01,
                  timeout_delay=3.0, retry_after=0.05)
    with FakeServer(chat_handler=tcia_chat_handler, model_name=("tiny", "tiny-b"), **faults) as server:
        cfg_kw = dict(max_states=120, samples=30)
        from ontask.models.openai.chat import RetryPolicy

        def loader(spec):
            from ontask.models.openai.chat import OpenAIChatGenerator

            # few attempts, short waits, so that some calls do run out of retries
            return OpenAIChatGenerator(spec.target, base_url=server.base_url, concurrency=64, timeout=1.0,
                                       retry=RetryPolicy(max_attempts=2, initial_wait=0.01, max_wait=0.05))

        cfg = _config(server.base_url, **cfg_kw)
        roles = Roles(cfg, ResultCache(tmp_path / "cache.sqlite"), loader=loader)
        manifest = run_augment([Seed(SEED)], read_inputs(DATA / "demo_inputs.jsonl"), cfg, tmp_path / "run",
                               db=db, embedder=embedder, roles=roles)
        faults_seen = Counter(r.get("fault") for r in server.requests if r.get("fault"))
    run = tmp_path / "run"
    failed = read_jsonl(run / "failed.jsonl")
    states = read_jsonl(run / "instructions.jsonl")
    assert faults_seen["500"] and faults_seen["429"]  # the faults really happened
    assert failed, "with 2 attempts per call some calls must have run out"
    assert all(r["reason"] and r["stage"] for r in failed)
    status = Counter(s["status"] for s in states)
    stages = Counter(r["stage"] for r in failed)
    assert status["compose_failed"] == stages["compose"] and status["verify_failed"] == stages["verify"]
    assert status["validity_failed"] == stages["validate"]
    for s in states:  # a failed state says why
        if s["status"].endswith("_failed"):
            assert s["reason"]
    for row in read_jsonl(run / "data.jsonl"):
        assert row["response"].strip() and 1 <= row["judge_mean"] <= 5
    f = manifest["funnel"]
    assert f["kept"] + f["drops"]["unanswered"] + f["drops"]["below_floor"] == f["paired"]


def _start_server_process(log: Path, latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "ontask.testing.fake_server", "--port", "0", "--latency", str(latency),
                             "--log", str(log), "--chat-handler", "tcia", "--model-name", "tiny"],
                            stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1"), url
    return proc, url


def _augment_cmd(run: Path, cache: Path, db: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "ontask.cli.main", "augment", "--seed", SEED, "--inputs", str(DATA / "demo_inputs.jsonl"),
            "--db", str(db), "-o", str(run), "--cache", str(cache), "--base-url", url, "--concurrency", "4",
            "--max-states", "40", "--samples", "12", "--inputs-per-instruction", "2", "--hops", "2", "--per-op", "3",
            "--min-validity", "3", "--min-consistency", "3",
            *[x for role in ("decomposer", "composer", "verifier", "judge", "responders") for x in (f"--{role}", "openai:tiny")]]


def test_kill_9_then_resume_pays_for_nothing_twice(tmp_path, db):
    db_dir = tmp_path / "db"
    db.save(db_dir)
    env = {**os.environ, "ONTASK_CACHE_DIR": str(tmp_path / "usercache")}
    # reference: one uninterrupted run
    ref_log, log = tmp_path / "ref.log", tmp_path / "killed.log"
    server, url = _start_server_process(ref_log, latency=0.05)
    try:
        subprocess.run(_augment_cmd(tmp_path / "ref", tmp_path / "ref.sqlite", db_dir, url), env=env, check=True,
                       capture_output=True, timeout=300)
    finally:
        server.kill()
    server, url = _start_server_process(log, latency=0.05)
    try:
        cmd = _augment_cmd(tmp_path / "run", tmp_path / "run.sqlite", db_dir, url)
        victim = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        total = len(read_jsonl(ref_log))
        deadline = time.time() + 240
        while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < total // 2):
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        assert not (tmp_path / "run" / "data.jsonl").exists()
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    finally:
        server.kill()
    assert len(read_jsonl(tmp_path / "ref" / "data.jsonl")) >= 8  # a real run, not two empty files
    assert (tmp_path / "run" / "data.jsonl").read_bytes() == (tmp_path / "ref" / "data.jsonl").read_bytes()
    assert (tmp_path / "run" / "instructions.jsonl").read_bytes() == (tmp_path / "ref" / "instructions.jsonl").read_bytes()
    answered = Counter(json.dumps(r["body"], sort_keys=True) for r in read_jsonl(log) if r["status"] == 200)
    twice = [b for b, n in answered.items() if n > 1]
    print(f"\nkill -9 resume: {sum(answered.values())} answered calls in the killed+resumed runs, "
          f"{len(read_jsonl(ref_log))} in one uninterrupted run, {len(twice)} answered twice")
    # only calls in flight at the kill (at most `--concurrency` of them) may be sent again
    assert len(twice) <= 4, f"{len(twice)} answered calls were sent twice"
    assert sum(answered.values()) <= len(read_jsonl(ref_log)) + 4


def test_cut_off_answers_are_failures_not_rows(tmp_path, db, embedder):
    def rambling(body):  # responders ramble past max_tokens; every other role answers as usual
        text = tcia_chat_handler(body)
        return text + " and so on" * 40 if text.startswith("Answer ") else text

    with FakeServer(chat_handler=rambling, model_name=("tiny", "tiny-b")) as server:
        manifest, run = _run(tmp_path, server, db, embedder, max_states=40, samples=8, response_max_tokens=32,
                             min_validity=3.0, min_consistency=3.0)  # 8 samples: some must pass to be paired
    failed = read_jsonl(run / "failed.jsonl")
    f = manifest["funnel"]
    assert f["paired"] > 0 and f["answered"] == f["kept"] == 0 and read_jsonl(run / "data.jsonl") == []
    assert {r["stage"] for r in failed} == {"respond"} and len(failed) == 2 * f["paired"]
    assert all("cut off at max_tokens=32" in r["reason"] for r in failed)


def test_priced_roles_report_what_their_sent_calls_cost(tmp_path, db, embedder):
    """A role's price (USD per million tokens, a setting) gives its spent cost in run.json from
    the tokens the server reported; unpriced roles have none, and the total sums the priced."""
    with FakeServer(chat_handler=tcia_chat_handler, model_name=("tiny", "tiny-b")) as server:
        manifest, _ = _run(tmp_path, server, db, embedder, samples=10, max_states=40,
                           models={"judge": {"input_price": 2.0, "output_price": 8.0},
                                   "composer": {"input_price": 1.0}})
    judge, composer = manifest["models"]["judge"], manifest["models"]["composer"]
    j, c = judge["calls"], composer["calls"]
    assert j["prompt_tokens"] > 0 and c["prompt_tokens"] > 0
    assert judge["cost_usd"] == round((j["prompt_tokens"] * 2.0 + j["completion_tokens"] * 8.0) / 1e6, 6)
    assert composer["cost_usd"] == round(c["prompt_tokens"] * 1.0 / 1e6, 6)
    assert "cost_usd" not in manifest["models"]["verifier"]
    assert manifest["cost_usd"] == round(judge["cost_usd"] + composer["cost_usd"], 6)


def test_the_python_api_augments_as_the_pipeline_does(tmp_path, db, embedder):
    """ontask.augment: a seed string and a list of input texts in, the run's rows out as a
    Dataset, the same rows as the pipeline writes for the same settings (one server, one cache);
    then ontask.report and ontask.export on the Result."""
    import datasets

    import ontask

    db.save(tmp_path / "db")
    inputs = [row["input"] for row in read_jsonl(DATA / "demo_inputs.jsonl")]
    with FakeServer(chat_handler=tcia_chat_handler, model_name=("tiny", "tiny-b")) as server:
        settings = dict(decomposer="openai:tiny", composer="openai:tiny", verifier="openai:tiny", judge="openai:tiny",
                        responders=["openai:tiny", "openai:tiny-b"], base_url=server.base_url, hops=2, per_op=4,
                        max_states=30, samples=8, inputs_per_instruction=2, seed=7, min_validity=3.0,
                        min_consistency=3.0)  # 8 samples: some must pass for rows to compare
        res = ontask.augment(SEED, inputs, output=tmp_path / "api", db=tmp_path / "db",
                             cache=tmp_path / "c.sqlite", **settings)
        cfg = AugmentConfig(**settings, db=str(tmp_path / "db"))
        run_augment([Seed(SEED)], read_inputs(DATA / "demo_inputs.jsonl"), cfg, tmp_path / "pipe", db=db,
                    embedder=embedder, roles=Roles(cfg, ResultCache(tmp_path / "c.sqlite")))
    assert isinstance(res.dataset, datasets.Dataset) and len(res) == res.manifest["outputs"]["rows"] > 0
    assert res.dataset.to_list() == read_jsonl(tmp_path / "pipe" / "data.jsonl")
    page = ontask.report(res, tmp_path / "r.html")
    assert page.exists() and "augmentation" in page.read_text(encoding="utf-8")
    card = ontask.export(res, tmp_path / "train.jsonl", format="alpaca")
    assert card["counts"]["exported"] == len(res) and card["recipe"] == ["augment"]


def test_dry_run_counts_the_search_exactly_and_bounds_every_roles_calls(tmp_path, db, embedder):
    """plan_augment explores what the run explores (exact states), and no role of the real run
    makes more calls than the plan's bound; the bound of the judge and responders is reached
    when every instruction is valid."""
    from ontask.tcia.pipeline import plan_augment

    with FakeServer(chat_handler=tcia_chat_handler, model_name=("tiny", "tiny-b")) as server:
        cfg = _config(server.base_url, samples=12, max_states=40)
        cache = ResultCache(tmp_path / "cache.sqlite")
        inputs = read_inputs(DATA / "demo_inputs.jsonl")
        plan = plan_augment([Seed(SEED)], inputs, cfg, db=db, embedder=embedder, roles=Roles(cfg, cache))
        manifest, _ = _run(tmp_path, server, db, embedder, samples=12, max_states=40)
    f = manifest["funnel"]
    assert (plan["states_explored"], plan["states_sampled"]) == (f["states_explored"], f["sampled"]) == (40, 12)
    assert plan["calls_at_most"]["composer"] == 12 * (1 + cfg.max_refinements)
    assert plan["rows_at_most"] == 12 * 2 >= f["kept"]
    for role, bound in plan["calls_at_most"].items():
        assert manifest["models"][role]["calls"]["requests"] <= bound, role

"""`score --engine ray` on a local Ray: the same output as the local engine, and a resume
after kill -9 that recomputes no finished pass."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from test_resume import make_rows, pass_count, run_cli

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'ontask[ray]')")


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


def _write_input(path: Path, n: int) -> None:
    lines = [json.dumps(r) for r in make_rows(n)]
    lines[5] = '{"instruction": "broken json'  # a row the reader reports with its line number
    lines[9] = json.dumps({"instruction": "no output here", "input": ""})  # a row without an output
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture()
def one_thread():
    """torch's CPU kernels sum in an order that depends on the thread count (last-bit float
    differences); each actor runs one thread, so the local reference does too. With equal
    threads the engines must agree to the bit: Ray itself must add no difference."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("metrics", [["ppl", "ifd", "tss", "tss++"], ["tss"]])
def test_ray_engine_writes_exactly_what_the_local_engine_writes(tmp_path, tiny_dir, local_ray, one_thread, metrics):
    from ontask.models import load_scorer
    from ontask.cache import ResultCache
    from ontask.embed import load_embedder
    from ontask.api import score_executor
    from ontask.scoring import ScoreConfig, run_score

    src = tmp_path / "rows.jsonl"
    _write_input(src, 70)
    base = dict(metrics=metrics, k=3, scorer=f"hf:{tiny_dir}", chunk_rows=8, batch_tokens=512)
    outs = {}
    for engine in ("local", "ray"):
        cfg = ScoreConfig(**base, engine=engine, workers=2)
        with ResultCache(tmp_path / f"{engine}.sqlite") as cache:
            emb = load_embedder(cfg.embedder, cache=cache) if "hard" in cfg.alternative_kinds else None
            scorer = load_scorer(cfg.scorer, batch_tokens=cfg.batch_tokens) if engine == "local" else None
            outs[engine] = run_score(src, tmp_path / engine, cfg, scorer=scorer, cache=cache, embedder=emb,
                                     executor=score_executor(cfg))  # the composition root picks the executor
    local, remote = outs["local"], outs["ray"]
    assert remote["engine"] == {"engine": "ray", "workers": 2, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0,
                                "chunks": 9}
    assert remote["scorer"]["fingerprint"] == local["scorer"]["fingerprint"]
    assert remote["counts"] == local["counts"] and remote["counts"]["rows_failed"] == 2
    assert remote["tokens_computed"] == local["tokens_computed"]
    for name in ("data.jsonl", "failed.jsonl"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    failed = [json.loads(x) for x in (tmp_path / "ray" / "failed.jsonl").read_text().splitlines()]
    assert [f["line"] for f in failed] == [6, 10]


def test_ray_run_killed_half_way_resumes_without_recomputing_finished_passes(tmp_path, tiny_dir):
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in make_rows(1500)), encoding="utf-8")
    config = tmp_path / "cfg.yaml"
    config.write_text("score:\n  chunk_rows: 25\n  batch_tokens: 512\n")
    common = [str(src), "--scorer", f"hf:{tiny_dir}", "--metrics", "ppl,ifd,tss", "-k", "2", "--config", str(config)]

    # The local reference runs one torch thread, as each actor does (see `one_thread`).
    ref = run_cli(["score", *common, "-o", str(tmp_path / "ref"), "--cache", str(tmp_path / "ref.sqlite")],
                  env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ref.wait(timeout=600) == 0, ref.stdout.read().decode()
    total = json.loads((tmp_path / "ref" / "run.json").read_text())["counts"]["passes_needed"]

    cache = tmp_path / "resume.sqlite"
    args = ["score", *common, "-o", str(tmp_path / "out"), "--cache", str(cache), "--engine", "ray", "--workers", "2"]
    proc = run_cli(args)
    deadline = time.time() + 300
    while pass_count(cache) < total // 3:
        assert proc.poll() is None, "the run finished before it could be killed; make it slower"
        assert time.time() < deadline
        time.sleep(0.01)
    # The driver and every process it started (Ray's GCS, raylet, scorer actors) die at once,
    # as in a machine crash; Ray starts some in their own process groups, so kill by descent.
    family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert psutil.wait_procs([p for p in map(_process, family) if p is not None], timeout=30)[1] == []
    at_kill = pass_count(cache)
    assert total // 3 <= at_kill < total
    assert not (tmp_path / "out" / "data.jsonl").exists()

    again = run_cli(args)
    assert again.wait(timeout=600) == 0, again.stdout.read().decode()
    counts = json.loads((tmp_path / "out" / "run.json").read_text())["counts"]
    # Every pass an actor committed before the kill is reused; nothing finished is computed again.
    assert counts["passes_cached"] == at_kill
    assert counts["passes_computed"] == total - at_kill
    assert (tmp_path / "out" / "data.jsonl").read_bytes() == (tmp_path / "ref" / "data.jsonl").read_bytes()


def test_ray_generator_gives_the_local_generators_answers(tiny_dir, local_ray, one_thread):
    """Local-model roles of augment on Ray: the same batches, so the same answers, as one local call."""
    from pydantic import BaseModel, Field

    from ontask.engine.ray_generate import RayGenerator
    from ontask.models import ChatRequest, ChatResult, ChoiceRequest, load_generator

    class Note(BaseModel):
        title: str = Field(max_length=30)
        points: int = Field(ge=1, le=5)

    words = "budget meeting launch refund invoice schedule".split()
    chat = [ChatRequest.of([{"role": "user", "content": " ".join(words[: 1 + i % 6]) + f" #{i}"}],
                           response_model=Note if i % 3 == 0 else None, max_tokens=12 + 4 * (i % 2))
            for i in range(21)]
    choice = [ChoiceRequest.of([{"role": "user", "content": f"Rate {w} from 1 to 5"}]) for w in words * 2]
    local = load_generator(f"hf:{tiny_dir}", batch_size=4)
    remote = RayGenerator(f"hf:{tiny_dir}", {"batch_size": 4}, workers=2, cpus=1, gpus=0)
    try:
        assert remote.fingerprint == local.fingerprint
        arrived: list[int] = []
        got = remote.chat(chat, on_result=lambda i, _: arrived.append(i))
        want = local.chat(chat)
        assert sorted(arrived) == list(range(len(chat)))
        assert got == want
        assert sum(isinstance(o, ChatResult) for o in got) >= 7  # the plain-text ones at least
        assert remote.choice_probs(choice) == local.choice_probs(choice)
    finally:
        remote.close()


def test_augment_on_ray_writes_what_the_local_engine_writes(tmp_path, tiny_dir, local_ray, one_thread):
    """The judge and one responder are a local model (served by actor pools on Ray); the
    other roles are a server model (they stay in the driver). Same rows, same states."""
    from test_augment import DATA, SEED, _config

    from ontask.cache import ResultCache
    from ontask.testing.fake_server import FakeServer
    from ontask.testing.tcia_handler import tcia_chat_handler
    from ontask.api import build_roles
    from ontask.tcia.pipeline import Seed, run_augment
    from ontask.tcia.sources import read_inputs

    emb, database = _embedder_and_db(tmp_path)
    runs = {}
    with FakeServer(chat_handler=tcia_chat_handler, model_name=("tiny", "tiny-b")) as server:
        for engine in ("local", "ray"):
            cfg = _config(server.base_url, judge=f"hf:{tiny_dir}", responders=["openai:tiny", f"hf:{tiny_dir}"],
                          max_states=60, samples=12, min_validity=1.0, min_consistency=1.0, min_choice_mass=0.001,
                          engine=engine, workers=2)
            roles = build_roles(cfg, ResultCache(tmp_path / f"{engine}.sqlite"))  # Ray actors for engine=ray
            runs[engine] = run_augment([Seed(SEED)], read_inputs(DATA / "demo_inputs.jsonl"), cfg, tmp_path / engine,
                                       db=database, embedder=emb, roles=roles)
    assert runs["ray"]["models"]["judge"]["engine"] == "ray"
    assert runs["ray"]["funnel"] == runs["local"]["funnel"] and runs["local"]["funnel"]["kept"] > 0
    for name in ("data.jsonl", "instructions.jsonl", "failed.jsonl"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def _embedder_and_db(tmp_path):
    from test_augment import DATA, read_jsonl

    from ontask.cache import ResultCache
    from ontask.embed import load_embedder
    from ontask.tcia.database import build_database

    emb = load_embedder("embedded", cache=ResultCache(tmp_path / "emb.sqlite"))
    return emb, build_database(read_jsonl(DATA / "demo_constraints.jsonl"), emb)

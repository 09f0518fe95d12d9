"""Streaming steps 4-6 write exactly what the stage-by-stage run writes.

Both runs go against the fake OpenAI-compatible server over real HTTP, with a handler that
fails some calls for good (deterministically, by content), so failed.jsonl is not empty;
each run has its own fresh cache, so every call is really sent in both. Also: overlapping
calls to one server model under `shared()` never exceed its concurrency together.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from importlib.resources import files
from pathlib import Path


from ontask.cache import ResultCache
from ontask.models import ChatRequest
from ontask.models.openai.chat import OpenAIChatGenerator
from ontask.tcia.config import AugmentConfig
from ontask.tcia.pipeline import Roles, Seed, run_augment
from ontask.tcia.sources import read_inputs
from ontask.testing.fake_server import FakeError, FakeServer
from ontask.testing.tcia_handler import tcia_chat_handler
from test_augment import SEED, read_jsonl  # the same seed

DATA = Path(str(files("ontask") / "data"))
OUTPUTS = ("data.jsonl", "instructions.jsonl", "failed.jsonl")

def flaky_handler(body: dict) -> str:
    """The TCIA answers, except that about one free-text or one-digit call in nine fails for
    good (HTTP 400, not retried), the same calls in every run. Structured calls are spared:
    a 400 there would read as the server refusing the schema form."""
    if body.get("response_format") is None:  # compose, respond and one-digit judges
        digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).digest()
        if digest[0] % 9 == 0:
            raise FakeError(400, "injected permanent failure")
    return tcia_chat_handler(body)


def _augment(server: FakeServer, out: Path, db, embedder, **kw) -> dict:
    cfg = AugmentConfig(decomposer="openai:tiny", composer="openai:tiny", verifier="openai:tiny", judge="openai:tiny",
                        responders=["openai:tiny", "openai:tiny-b"], base_url=server.base_url, concurrency=8,
                        hops=2, per_op=6, max_states=80, samples=24, inputs_per_instruction=2, seed=3,
                        min_validity=3.0, min_consistency=3.0, **kw)
    roles = Roles(cfg, ResultCache(out / "cache.sqlite"))
    return run_augment([Seed(SEED)], read_inputs(DATA / "demo_inputs.jsonl"), cfg, out / "run", db=db,
                       embedder=embedder, roles=roles)


def test_streaming_writes_what_stage_by_stage_writes(tmp_path, db, embedder):
    with FakeServer(chat_handler=flaky_handler, model_name=("tiny", "tiny-b")) as server:
        streamed = _augment(server, tmp_path / "streamed", db, embedder)
        staged = _augment(server, tmp_path / "staged", db, embedder, streaming=False)
    assert "steps_4_6" in streamed["timings_s"] and "respond" in staged["timings_s"]  # both paths really ran
    for name in OUTPUTS:
        assert (tmp_path / "streamed" / "run" / name).read_bytes() == (tmp_path / "staged" / "run" / name).read_bytes(), name
    failed = read_jsonl(tmp_path / "streamed" / "run" / "failed.jsonl")
    stages = {f["stage"] for f in failed}
    assert {"compose", "respond"} <= stages and stages & {"validate", "judge_answer", "on_task_judge"}, stages
    assert streamed["funnel"] == staged["funnel"] and streamed["funnel"]["kept"] > 0
    assert streamed["on_task"] == staged["on_task"] and streamed["diversity"] == staged["diversity"]
    for role, described in streamed["models"].items():  # the same calls sent, cached and failed per role
        assert described["calls"] == staged["models"][role]["calls"], role


def test_overlapping_calls_share_one_in_flight_limit():
    """Eight calls of four answers each, overlapping on one event loop: under `shared()` the
    server never sees more than the model's concurrency (4) in flight; every answer comes
    back in place."""
    with FakeServer(latency=0.05) as server:
        gen = OpenAIChatGenerator("tiny", base_url=server.base_url, concurrency=4)

        async def ask(t: int) -> list:
            return await gen.achat([ChatRequest.of([{"role": "user", "content": f"q{t}-{i}"}]) for i in range(4)])

        async def overlapping() -> list:
            async with gen.shared():
                return await asyncio.gather(*(ask(t) for t in range(8)))

        results = asyncio.run(overlapping())
        assert server.max_in_flight <= 4
        assert all(len(r) == 4 and all(x.text for x in r) for r in results)
        assert gen.chat([ChatRequest.of([{"role": "user", "content": "after"}])])[0].text  # closed: calls work as before


def test_the_heap_is_frozen_for_a_run_only():
    """`frozen_heap` keeps what the process held before out of the collector's full passes
    while a run lasts (nested: until the outermost one ends), then gives it back; a heap
    someone else froze stays frozen."""
    import gc

    from ontask.tcia.pipeline import frozen_heap

    assert gc.get_freeze_count() == 0
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_checkers_preload_in_a_thread_only_when_the_run_checks():
    from ontask.checks import library
    from ontask.tcia.outcomes import preload_checks

    base = dict(decomposer="openai:tiny", composer="openai:tiny", verifier="openai:tiny", judge="openai:tiny",
                responders=["openai:tiny"])
    assert preload_checks(AugmentConfig(**base, check=False)) is None
    thread = preload_checks(AugmentConfig(**base))
    thread.join(120)
    assert not thread.is_alive() and library._loaded is not None

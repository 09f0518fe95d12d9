"""Adaptive rate control (AIMD, Retry-After, budgets) over real HTTP against the fake server."""

from __future__ import annotations

import asyncio
import time

from ontask.models.base import ChatRequest, ChatResult
from ontask.models.openai.chat import OpenAIChatGenerator, RetryPolicy
from ontask.models.transport.rate import RateControl, RateController, new_state
from ontask.testing.fake_server import FakeError, FakeServer, default_chat_answer

CHAT = "/v1/chat/completions"
RETRY = RetryPolicy(max_attempts=20, initial_wait=0.01, max_wait=0.05)


def _requests(n: int) -> list[ChatRequest]:
    return [ChatRequest.of([{"role": "user", "content": f"question number {i}"}], max_tokens=16) for i in range(n)]


def _run(srv: FakeServer, rate: RateControl, n: int = 240, concurrency: int = 32) -> tuple[OpenAIChatGenerator, list, list]:
    gen = OpenAIChatGenerator("tiny", base_url=srv.base_url, api_key="EMPTY", concurrency=concurrency,
                              retry=RETRY, rate=rate)
    out = gen.chat(_requests(n))
    return gen, out, [r for r in srv.requests if r["path"] == CHAT]


def test_aimd_learns_a_concurrency_limit_and_keeps_rejections_rare():
    with FakeServer(latency=0.03, max_concurrent=16, retry_after=0.01) as srv:
        gen, out, log = _run(srv, RateControl(), n=600, concurrency=64)
    assert all(isinstance(o, ChatResult) for o in out)
    rejected = sum(1 for r in log if r["status"] == 429)
    assert rejected / len(out) < 0.08, rejected
    st = gen.rate_state
    assert st.decreases >= 1 and st.rejected == rejected
    assert st.limit <= 20  # it settled near the server's 16, far below the 64 allowed

    # The same run with a fixed 64 in flight: most attempts bounce off the limit (some
    # requests even run out of their 20 attempts).
    with FakeServer(latency=0.03, max_concurrent=16, retry_after=0.01) as srv:
        gen2, out2, log2 = _run(srv, RateControl(adaptive=False), n=600, concurrency=64)
    print(f"adaptive: {rejected} rejected, limit {st.limit:.1f}; fixed: {sum(1 for r in log2 if r['status'] == 429)}"
          f" rejected, {sum(1 for o in out2 if not isinstance(o, ChatResult))} failed")
    fixed_rejected = sum(1 for r in log2 if r["status"] == 429)
    assert fixed_rejected > 5 * max(rejected, 1), (fixed_rejected, rejected)
    assert gen2.rate_state.decreases == 0 and gen2.rate_state.limit == 64


def test_the_limit_climbs_to_the_maximum_while_calls_succeed():
    with FakeServer(latency=0.02) as srv:
        gen, out, log = _run(srv, RateControl(initial=2), n=200, concurrency=16)
    assert all(isinstance(o, ChatResult) for o in out)
    assert gen.rate_state.limit == 16 and gen.rate_state.rejected == 0
    assert srv.max_in_flight == 16  # slow start reached the configured maximum, never more


def test_a_rejection_burst_from_one_window_halves_the_limit_once():
    """Eight requests sent together, all refused once: one congestion signal, one halving."""
    refused: set[str] = set()

    def once(body):
        text = body["messages"][-1]["content"]
        if text not in refused:
            refused.add(text)
            raise FakeError(429, "busy", {"retry-after-ms": "10"})
        return default_chat_answer(body)

    with FakeServer(chat_handler=once, latency=0.05) as srv:
        gen = OpenAIChatGenerator("tiny", base_url=srv.base_url, api_key="EMPTY", concurrency=8, retry=RETRY,
                                  rate=RateControl(initial=8))
        out = gen.chat(_requests(8))
    assert all(isinstance(o, ChatResult) for o in out)
    assert gen.rate_state.rejected == 8 and gen.rate_state.decreases == 1


def test_retry_after_pauses_every_new_send():
    """A 429 with Retry-After 0.6 s holds back all sends, not only the refused request's retry."""
    first = []

    def gate(body):
        if not first:
            first.append(time.time())
            raise FakeError(429, "slow down", {"retry-after-ms": "600"})
        return default_chat_answer(body)

    with FakeServer(chat_handler=gate) as srv:
        gen = OpenAIChatGenerator("tiny", base_url=srv.base_url, api_key="EMPTY", concurrency=1, retry=RETRY,
                                  rate=RateControl(initial=1))
        out = gen.chat(_requests(4))
        log = [r for r in srv.requests if r["path"] == CHAT]
    assert all(isinstance(o, ChatResult) for o in out)
    refused_at = log[0]["answered"]
    assert log[0]["status"] == 429
    assert all(r["received"] - refused_at >= 0.59 for r in log[1:])
    assert gen.rate_state.paused_s >= 0.59


def test_token_budget_waits_and_reported_usage_refunds_the_estimate():
    async def scenario() -> tuple[float, float]:
        ctl = RateController(RateControl(tokens_per_minute=1200), 8, new_state(RateControl(), 8))
        big = await ctl.acquire(1200)  # a full minute's budget, available at once
        t = time.monotonic()
        small = await ctl.acquire(10)  # 20 tokens/s refill: ~0.5 s
        waited = time.monotonic() - t
        await ctl.release(big, "ok", used_tokens=200)  # the server reported 200: 1,000 come back
        t = time.monotonic()
        await ctl.acquire(10)
        refunded = time.monotonic() - t
        await ctl.release(small, "ok", used_tokens=10)
        return waited, refunded

    waited, refunded = asyncio.run(scenario())
    assert 0.4 <= waited <= 1.0
    assert refunded < 0.05


def test_rate_settings_reach_run_json_but_not_the_fingerprint():
    a = OpenAIChatGenerator("m", base_url="http://127.0.0.1:9/v1", rate=RateControl(tokens_per_minute=1000))
    b = OpenAIChatGenerator("m", base_url="http://127.0.0.1:9/v1", rate={"adaptive": False})
    assert a.fingerprint == b.fingerprint  # how fast answers come does not change them
    assert a.describe()["rate"]["tokens_per_minute"] == 1000 and b.describe()["rate"]["adaptive"] is False

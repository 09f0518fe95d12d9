"""Rate control for OpenAI-compatible servers: how many requests may be in flight, and when.

Kept apart from the retry policy (`retry.RetryPolicy`): the retry policy decides
whether and after how long *one* failed request is tried again; rate control decides
when *any* request may be sent. A 429 feeds both: the request is retried by the policy,
and the controller lowers the concurrency for everyone.

The controller is AIMD, as TCP congestion control is:
- **multiplicative decrease**: a 429 (or 503, "overloaded") halves the concurrency limit,
  once per window: only a rejection of a request sent *after* the last decrease lowers it
  again, so a burst of 429s from one wave counts as one signal, not forty;
- **only load-related rejections count**: a 429 says "too much" only if refusals are a
  large share (>= 25%) of the recent answers to requests sent with as many in flight or
  more (with fewer than 4 such answers: unless one of them succeeded), or of all recent
  answers (a rate budget running dry), or most answers early on. A lone 429 amid successes
  at that concurrency (a flaky gateway, a shared quota's hiccup) is retried and its
  Retry-After honoured, but it does not lower the limit: halving on it would collapse
  throughput, as plain AIMD does under random loss. Before a few answers have come back
  nothing is judged (the request is retried and asks again);
- **additive increase**: every success adds `increase / limit`, i.e. about +`increase`
  per round trip of a full window;
- **slow start**: below `threshold` every success adds 1 (the limit doubles per round
  trip). A run starts in slow start from `initial` (None: the configured maximum itself)
  up to the configured maximum. A
  rejected request tells where the server's limit is: it was sent with N requests in
  flight, so the server holds fewer than N. The threshold goes just under that, so after
  halving the limit climbs straight back there and only then probes above it. A limit
  that gets a quarter (at least 2) past the threshold unrefused shows the threshold was
  wrong: slow start again;
- **probing backs off**: each time the server says no again at the same level, probing
  above it gets twice as slow (up to 16x): a server with a fixed limit is probed rarely,
  one whose limit moves is followed;
- **Retry-After**: a 429's Retry-After pauses all new sends until it has passed;
- **tokens per minute / requests per minute**: optional budgets, token buckets refilled
  continuously; a request reserves its estimated tokens (prompt + max_tokens) before it is
  sent and the estimate is corrected by the usage the server reports.

The learned limit outlives one `chat()` call (it is kept in `RateState`), so a pipeline
that calls the generator batch after batch does not rediscover the server's limit each time.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RECENT = 64  # answers remembered to judge whether a rejection is about load
REJECTED_SHARE = 0.25  # this share of refusals (at a level, or overall) means overload
MIN_EVIDENCE = 4  # answers needed before a share is trusted


class RateControl(BaseModel):
    """Settings of the adaptive concurrency and the optional throughput budgets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    adaptive: bool = Field(True, description="AIMD on 429/503; off: a fixed number in flight")
    initial: int | None = Field(32, ge=1, description="in-flight limit at the start (slow start from here to the "
                                                      "maximum); none: start at the maximum")
    minimum: int = Field(1, ge=1)
    increase: float = Field(1.0, gt=0, description="additive increase per round trip of a full window")
    decrease: float = Field(0.5, gt=0, lt=1, description="multiplicative decrease on a rejection")
    tokens_per_minute: int | None = Field(None, ge=1, description="prompt + completion token budget")
    requests_per_minute: int | None = Field(None, ge=1)


@dataclass
class RateState:
    """What the controller has learned and counted; kept across calls and shown in run.json."""

    limit: float
    threshold: float
    sent: int = 0
    rejected: int = 0  # 429/503 answers
    decreases: int = 0
    unrelated: int = 0  # rejections judged not to be about load (no decrease, no pause)
    probe_wait: float = 1.0  # how much slower than +increase per round trip it probes above threshold
    paused_s: float = 0.0  # time new sends were held back by a Retry-After
    peak_in_flight: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"limit": round(self.limit, 2), "threshold": round(self.threshold, 2),
                "probe_wait": self.probe_wait, "sent": self.sent, "unrelated": self.unrelated,
                "rejected": self.rejected, "decreases": self.decreases, "paused_s": round(self.paused_s, 3),
                "peak_in_flight": self.peak_in_flight}


def new_state(control: RateControl, maximum: int) -> RateState:
    start = float(min(control.initial or maximum, maximum)) if control.adaptive else float(maximum)
    return RateState(limit=start, threshold=float(maximum))


@dataclass(slots=True)
class Ticket:
    """One admitted request: the window it was sent in and the tokens it reserved."""

    epoch: int
    tokens: float
    in_flight: int  # requests in flight when it was sent, itself included


class TokenBucket:
    """A budget per minute, refilled continuously; starts full (one minute's worth)."""

    def __init__(self, per_minute: float) -> None:
        self.capacity = float(per_minute)
        self.rate = self.capacity / 60.0
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0: now). A request larger than a whole minute's
        budget waits for a full bucket instead of forever."""
        self._refill()
        amount = min(amount, self.capacity)
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= min(amount, self.capacity)

    def give_back(self, amount: float) -> None:
        """Correct a reservation: positive returns unused tokens, negative charges extra."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class RateController:
    """Admission of requests on one event loop; state shared through `RateState`."""

    def __init__(self, control: RateControl, maximum: int, state: RateState) -> None:
        self.control, self.maximum, self.state = control, maximum, state
        self.in_flight = 0
        self.epoch = 0
        self.paused_until = 0.0
        self._cond = asyncio.Condition()
        self._recent: collections.deque[tuple[bool, int]] = collections.deque(maxlen=RECENT)  # (ok, in flight at send)
        self._window_low = maximum + 1  # lowest in-flight level refused since the last decrease
        self._tokens = TokenBucket(control.tokens_per_minute) if control.tokens_per_minute else None
        self._requests = TokenBucket(control.requests_per_minute) if control.requests_per_minute else None

    @property
    def counts_tokens(self) -> bool:
        """Whether a token budget is set (only then is a request's token estimate needed)."""
        return self._tokens is not None

    def _wait_s(self, tokens: float) -> float | None:
        """Seconds to wait before the next send may go; None: wait for a release."""
        now = time.monotonic()
        if now < self.paused_until:
            return self.paused_until - now
        if self.in_flight >= max(1, int(self.state.limit)):
            return None
        waits = [b.wait_for(n) for b, n in ((self._tokens, tokens), (self._requests, 1.0)) if b is not None]
        return max(waits, default=0.0)

    async def acquire(self, estimated_tokens: float) -> Ticket:
        async with self._cond:
            while True:
                wait = self._wait_s(estimated_tokens)
                if wait == 0.0:
                    break
                try:
                    await asyncio.wait_for(self._cond.wait(), timeout=wait)
                except TimeoutError:
                    pass
            self.in_flight += 1
            self.state.sent += 1
            self.state.peak_in_flight = max(self.state.peak_in_flight, self.in_flight)
            if self._tokens is not None:
                self._tokens.take(estimated_tokens)
            if self._requests is not None:
                self._requests.take(1.0)
            return Ticket(self.epoch, estimated_tokens, self.in_flight)

    async def release(self, ticket: Ticket, outcome: str, *, used_tokens: int | None = None,
                      retry_after: float | None = None) -> None:
        """`outcome`: "ok" (answered), "rejected" (429/503: the server is over its limit) or
        "failed" (anything else; says nothing about load)."""
        async with self._cond:
            self.in_flight -= 1
            if self._tokens is not None and used_tokens is not None:
                self._tokens.give_back(ticket.tokens - used_tokens)
            st, c = self.state, self.control
            if outcome in ("ok", "rejected"):
                self._recent.append((outcome == "ok", ticket.in_flight))
            if outcome == "ok" and c.adaptive:
                if st.limit < st.threshold:
                    st.limit = min(st.threshold, st.limit + 1.0)
                else:
                    st.limit += c.increase / (st.limit * st.probe_wait)
                    # well past the supposed ceiling (a quarter, at least 2) and never refused: it was not one
                    if st.limit >= st.threshold + max(2.0, st.threshold / 4):
                        st.threshold, st.probe_wait = float(self.maximum), 1.0
                st.limit = min(float(self.maximum), st.limit)
            elif outcome == "rejected":
                st.rejected += 1
                if ticket.epoch == self.epoch:  # the lowest level refused in this window, judged or not
                    self._window_low = min(self._window_low, ticket.in_flight)
                if retry_after:  # the server asked this client to wait: nothing is sent until then
                    until = time.monotonic() + retry_after
                    if until > self.paused_until:
                        st.paused_s += until - max(self.paused_until, time.monotonic())
                        self.paused_until = until
                if not self._about_load(ticket):
                    st.unrelated += 1
                    self._wake()
                    return
                ceiling = max(float(c.minimum), float(min(ticket.in_flight, self._window_low) - 1))
                if c.adaptive and ticket.epoch == self.epoch:  # the first signal of this window
                    same_place = abs(ceiling - st.threshold) <= 1.0
                    st.probe_wait = min(16.0, st.probe_wait * 2.0) if same_place else 1.0
                    st.threshold = ceiling
                    st.limit = max(float(c.minimum), st.limit * c.decrease)
                    st.decreases += 1
                    self.epoch += 1
                    self._window_low = self.maximum + 1
                elif c.adaptive:  # later signals of the same window only sharpen the estimate
                    st.threshold = min(st.threshold, ceiling)
            self._wake()

    def _wake(self) -> None:
        """Wake as many waiting senders as there are free slots, not all of them: with 128
        workers waiting, waking everyone on every answer costs more CPU than the answer.
        (A sender held back by a pause or a budget wakes itself when its wait is over.)"""
        free = int(self.state.limit) - self.in_flight
        if free > 0:
            self._cond.notify(free)

    def _about_load(self, ticket: Ticket) -> bool:
        """Is this rejection a sign of load? (See the module docstring.)"""
        recent = self._recent
        refused = sum(1 for ok, _ in recent if not ok)
        if len(recent) >= MIN_EVIDENCE and refused >= 0.5 * len(recent):
            return True  # most answers are refusals: overload, however early
        if len(recent) - refused < MIN_EVIDENCE:
            return False  # too early to tell; the request is retried and asks again
        if len(recent) >= 16 and refused >= REJECTED_SHARE * len(recent):
            return True  # a rate budget running dry refuses at every level
        # At this many in flight or more, is the server refusing often? (A success at a level
        # just above the limit happens too: our count can run ahead of the server's.)
        at = [ok for ok, level in recent if level >= ticket.in_flight]
        if len(at) < MIN_EVIDENCE:  # few answers up there: load unless one of them succeeded
            return True not in at
        return at.count(False) >= REJECTED_SHARE * len(at)


def estimate_tokens(body: dict[str, Any]) -> float:
    """A request's token cost before it is answered: ~4 characters a token for the prompt,
    plus the completion budget. Corrected by the reported usage afterwards."""
    chars = sum(len(str(m.get("content") or "")) for m in body.get("messages") or ())
    return chars / 4.0 + float(body.get("max_tokens") or 0)

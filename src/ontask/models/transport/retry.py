"""How one failed HTTP request is retried: the policy, the backoff, the server's Retry-After.

Shared by every client of an OpenAI-compatible server (chat generation, server scoring) and
kept apart from rate control (`rate.py`), which decides when *any* request may be sent.
Waits are exponential with jitter and never shorter than the server's `Retry-After` /
`retry-after-ms`; a Retry-After longer than `max_retry_after` ends the request instead of
stalling the run.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential

log = logging.getLogger(__name__)


class RetryPolicy(BaseModel):
    """How failed HTTP attempts are retried (429, 408, 5xx, timeouts, broken bodies).

    The n-th wait is `min(max_wait, initial_wait * 2**(n-1))`, scaled by a random factor in
    [0.5, 1] with `jitter`, and never shorter than the server's Retry-After; a Retry-After
    longer than `max_retry_after` ends the request instead of stalling the run.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(6, ge=1)
    initial_wait: float = Field(0.5, ge=0)
    max_wait: float = Field(30.0, ge=0)
    jitter: bool = True
    max_retry_after: float = Field(120.0, ge=0)


class Failure(Exception):
    """An attempt (or a request) that failed; `retryable` ones go through the retry policy."""

    def __init__(self, reason: str, status: int | None = None, *, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.status, self.retryable, self.retry_after = reason, status, retryable, retry_after


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, Failure) and exc.retryable


class Backoff(wait_base):
    """Exponential backoff with jitter, never shorter than the server's Retry-After."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.exponential = wait_exponential(multiplier=policy.initial_wait, max=policy.max_wait)

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = self.exponential(retry_state)
        if self.policy.jitter:
            wait *= random.uniform(0.5, 1.0)
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        hint = exc.retry_after if isinstance(exc, Failure) else None
        return max(wait, hint) if hint is not None else wait


def log_retry(retry_state: RetryCallState) -> None:
    exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
    wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
    log.debug("attempt %d failed (%s); retrying in %.2fs", retry_state.attempt_number, exc, wait)


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds the server asked to wait (`retry-after-ms`, `retry-after`: seconds or a date)."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            when = email.utils.parsedate_tz(value)
            if when is None:
                continue
            seconds = email.utils.mktime_tz(when) - time.time()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def retrying(policy: RetryPolicy) -> AsyncRetrying:
    """tenacity's retry loop for `policy`: retries `Failure`s marked retryable, re-raises the last."""
    return AsyncRetrying(stop=stop_after_attempt(policy.max_attempts), wait=Backoff(policy),
                         retry=retry_if_exception(is_retryable), reraise=True, before_sleep=log_retry)

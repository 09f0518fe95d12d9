"""The score formulas of tss.md as pure functions of mean output log-probabilities.

`lp` always means the mean natural-log probability of the output tokens (a negative
number); every function here is plain arithmetic so it can be checked by hand.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

Aggregator = Literal["logmeanexp", "mean", "max"]


def perplexity(lp_true: float) -> float:
    return math.exp(-lp_true)


def ifd(lp_true: float, lp_empty: float) -> float:
    """Cherry_LLM's IFD: mean loss with the instruction / mean loss without it."""
    return lp_true / lp_empty if lp_empty != 0 else math.inf


def ifd_ppl(lp_true: float, lp_empty: float) -> float:
    """Superfiltering's variant: ratio of perplexities, exp(lp_empty - lp_true)."""
    return math.exp(lp_empty - lp_true)


def aggregate(lps: Sequence[float], how: Aggregator = "logmeanexp") -> float:
    """Collapse the alternatives' log-probs into one competitor log-prob."""
    if not lps:
        raise ValueError("no alternatives to aggregate")
    if how == "logmeanexp":
        top = max(lps)
        return top + math.log(sum(math.exp(x - top) for x in lps) / len(lps))
    if how == "mean":
        return sum(lps) / len(lps)
    if how == "max":
        return max(lps)
    raise ValueError(f"unknown aggregator {how!r}")


def tss(lp_true: float, lp_alternatives: Sequence[float], how: Aggregator = "logmeanexp") -> float:
    """TSS = lp(I_true) - aggregate(lp(I_k)). Positive: the instruction matters."""
    return lp_true - aggregate(lp_alternatives, how)


def most_likely(lps: Sequence[float], k: int) -> list[float]:
    """The k largest log-probs (ties: the earlier, i.e. nearer by embedding): the alternatives
    under which the output is most likely, TSS++'s hard competitors."""
    order = sorted(range(len(lps)), key=lambda i: (-lps[i], i))
    return [lps[i] for i in order[:k]]


class RunningStats:
    """Mean and population standard deviation in one pass (Welford), for z-scores."""

    def __init__(self) -> None:
        self.n, self.mean, self._m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self._m2 += d * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / self.n) if self.n else 0.0

    def z(self, x: float) -> float:
        """z-score; 0 when every value is equal (no spread to rank by)."""
        s = self.std
        return (x - self.mean) / s if s > 0 else 0.0


def tss_pp(z_tss_hard: float, z_quality: float, lam: float) -> float:
    """TSS++ = z(TSS_hard) + lambda * z(q)."""
    return z_tss_hard + lam * z_quality

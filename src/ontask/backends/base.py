"""The scorer interface: log-probabilities of output tokens given a chat prompt, batched.

Every score in ontask (perplexity, IFD, TSS, TSS++) is built from one primitive: the
summed log-probability of an assistant turn's tokens given a user turn, under one model
and its chat template. Backends implement only that; everything else is pure arithmetic
in `ontask.scoring`. Keeping the interface this small is what lets a local transformers
model, a vLLM server and (later) an in-process vLLM engine be swapped freely.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

# Bump when the meaning of a stored pass result changes (e.g. which tokens are counted).
PASS_SEMANTICS_VERSION = 1


@dataclass(frozen=True, slots=True)
class PassRequest:
    """One forward pass: score `output` as the assistant's reply to the user turn `user`.

    `user` is already assembled (instruction, blank line, input), or "" for the empty
    prompt that IFD contrasts against.
    """

    user: str
    output: str


@dataclass(frozen=True, slots=True)
class PassResult:
    """Summed natural-log probability of the output tokens and how many there were."""

    sum_logprob: float
    n_output: int
    n_prompt: int

    @property
    def mean_logprob(self) -> float:
        return self.sum_logprob / self.n_output


@dataclass(frozen=True, slots=True)
class PassError:
    """A pass that could not be computed (too long, empty after tokenisation, server error)."""

    reason: str


PassOutcome = PassResult | PassError


@runtime_checkable
class Scorer(Protocol):
    """What a scoring backend provides."""

    name: str  # the user's model string, e.g. "embedded" or "hf:/models/x"

    @property
    def fingerprint(self) -> str:
        """Stable hash of everything that changes results: weights, template, settings."""
        ...

    def describe(self) -> dict[str, Any]:
        """Model identity for run.json (no secrets)."""
        ...

    def render_prompt(self, user: str) -> str:
        """The chat-templated prompt text up to where the assistant's reply begins."""
        ...

    def score(self, requests: Sequence[PassRequest]) -> list[PassOutcome]:
        """Results aligned with `requests`. Must not raise for one bad request."""
        ...

    def count_tokens(self, text: str) -> int:
        """Token count with this scorer's tokenizer (used for token budgets)."""
        ...


def fingerprint_of(identity: dict[str, Any]) -> str:
    """Hash a JSON-able identity dict into a short, stable fingerprint."""
    blob = json.dumps({"v": PASS_SEMANTICS_VERSION, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def build_user_turn(instruction: str, input_text: str) -> str:
    """The user turn defined in tss.md: the instruction, a blank line, then the input."""
    if input_text.strip():
        return f"{instruction}\n\n{input_text}" if instruction else input_text
    return instruction

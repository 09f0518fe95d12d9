"""The two things a model does for ontask, as protocols every provider implements.

- **Scoring** (`Scorer`): the summed log-probability of an assistant turn's tokens given a
  user turn, under one model and its chat template, batched. Every score in ontask
  (perplexity, IFD, TSS, TSS++) is built from that one primitive; everything else is pure
  arithmetic in `ontask.scoring`.
- **Generation** (`Generator`): chat messages in; text, or an object valid against a
  pydantic schema, out (`chat`); and `choice_probs`, the next-token probabilities of a few
  single-token choices ("1".."5") after the prompt: the cheap, calibrated judge. Both take
  an `on_result(index, outcome)` callback that fires the moment one answer is final, which
  is how `CachedGenerator` persists each answer as it arrives.

Failures are values (`PassError`, `GenError`) with a reason, never an empty string or a
default score. Keeping both interfaces this small is what lets a local transformers model,
an in-process vLLM engine and any OpenAI-compatible server be swapped freely per role.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel

# == scoring ==============================================================================

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
OnResults = Callable[[list[tuple[int, PassOutcome]]], None]


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

    def score(self, requests: Sequence[PassRequest], on_results: "OnResults | None" = None) -> list[PassOutcome]:
        """Results aligned with `requests`. Must not raise for one bad request.

        `on_results([(index, outcome), ...])` fires as soon as results are final (a forward
        batch, a server answer): the caller commits them there, so an interrupt loses at
        most the batch in flight. An exception it raises (a spent budget, Ctrl-C) stops the
        call, and whatever was reported before stays reported."""
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


# == generation ===========================================================================

# Bump when the meaning of a stored generation changes.
GENERATION_SEMANTICS_VERSION = 1


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@functools.lru_cache(maxsize=512)
def json_schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """A response model's JSON schema, built once per class: pydantic builds it anew on every
    call (~0.4 ms), and every structured request asks for it (its cache key, its body).
    Shared by every caller: read it, never change it."""
    return model.model_json_schema()


@dataclass(frozen=True)
class ChatRequest:
    """One chat call. `messages` are {"role", "content"} dicts (system/user/assistant)."""

    messages: tuple[dict[str, str], ...]
    response_model: type[BaseModel] | None = None
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int = 0

    @staticmethod
    def of(messages: Sequence[dict[str, str]], **kw: Any) -> "ChatRequest":
        return ChatRequest(tuple(dict(m) for m in messages), **kw)

    def schema(self) -> dict[str, Any] | None:
        return json_schema_of(self.response_model) if self.response_model else None

    def key_parts(self) -> dict[str, Any]:
        """Everything that changes the answer (for the cache key), JSON-able."""
        return {
            "messages": list(self.messages),
            "schema": self.schema(),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A final answer. `data` is the validated object (a dict) when a model was requested."""

    text: str
    data: dict[str, Any] | None = None
    usage: Usage = field(default_factory=Usage)
    attempts: int = 1
    cached: bool = False
    repaired: bool = False  # the JSON needed repair (fences, trailing text, ...) before it validated
    truncated: bool = False  # a free-text answer cut off at max_tokens (JSON answers never are: those fail)


@dataclass(frozen=True)
class ChoiceRequest:
    """Next-token probabilities of `choices` (single tokens) after the chat prompt."""

    messages: tuple[dict[str, str], ...]
    choices: tuple[str, ...] = ("1", "2", "3", "4", "5")

    @staticmethod
    def of(messages: Sequence[dict[str, str]], choices: Sequence[str] = ("1", "2", "3", "4", "5")) -> "ChoiceRequest":
        return ChoiceRequest(tuple(dict(m) for m in messages), tuple(choices))

    def key_parts(self) -> dict[str, Any]:
        return {"messages": list(self.messages), "choices": list(self.choices)}


@dataclass(frozen=True, slots=True)
class ChoiceResult:
    """`probs[c]` renormalised over the choices; `mass` = their share before renormalising."""

    probs: dict[str, float]
    mass: float
    usage: Usage = field(default_factory=Usage)
    cached: bool = False

    def expected(self, values: dict[str, float] | None = None) -> float:
        """Expected value, by default each choice read as a number ("1".."5" -> 1..5)."""
        return sum(p * (values[c] if values else float(c)) for c, p in self.probs.items())


@dataclass(frozen=True, slots=True)
class GenError:
    """A call that failed for good (after retries/re-asks), with the reason."""

    reason: str
    attempts: int = 1
    usage: Usage = field(default_factory=Usage)


ChatOutcome = ChatResult | GenError
ChoiceOutcome = ChoiceResult | GenError
OnChat = Callable[[int, ChatOutcome], None]
OnChoice = Callable[[int, ChoiceOutcome], None]


@runtime_checkable
class Generator(Protocol):
    """What a generation backend provides."""

    name: str  # the user's model string: "embedded", "hf:/models/x", "openai:gpt-4.1"

    @property
    def fingerprint(self) -> str:
        """Stable hash of everything that changes answers: weights, template, settings."""
        ...

    @property
    def supports_choice_probs(self) -> bool:
        ...

    def describe(self) -> dict[str, Any]:
        """Identity for run.json (never secrets)."""
        ...

    def chat(self, requests: Sequence[ChatRequest], on_result: OnChat | None = None) -> list[ChatOutcome]:
        """Outcomes aligned with `requests`; must not raise for one bad request."""
        ...

    def choice_probs(self, requests: Sequence[ChoiceRequest], on_result: OnChoice | None = None) -> list[ChoiceOutcome]:
        ...


def generation_fingerprint_of(identity: dict[str, Any]) -> str:
    blob = json.dumps({"v": GENERATION_SEMANTICS_VERSION, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def normalise_choice_token(token: str) -> str:
    """How a sampled token is matched to a choice: surrounding whitespace ignored."""
    return token.strip()


def renormalise_choices(choices: Sequence[str], top: Sequence[tuple[str, float]]) -> tuple[dict[str, float], float]:
    """(`probs` over `choices`, their summed probability) from a next token's top log-probs.

    `top` is (decoded token, logprob) pairs as a backend reports them. Tokens are matched to
    choices with `normalise_choice_token`, so "1" and " 1" both count for choice "1"; a
    non-finite logprob counts as zero. When no choice appears, `probs` is all zeros and the
    mass is 0.0: the caller turns that into a `GenError`, never a made-up distribution.
    One function, so every backend that reads top log-probs renormalises the same way.
    """
    wanted = {normalise_choice_token(c): c for c in choices}
    mass_of = dict.fromkeys(choices, 0.0)
    for token, logprob in top:
        choice = wanted.get(normalise_choice_token(str(token)))
        if choice is not None and isinstance(logprob, (int, float)) and math.isfinite(logprob):
            mass_of[choice] += math.exp(logprob)
    mass = math.fsum(mass_of.values())
    if mass <= 0.0:
        return mass_of, 0.0
    return {c: p / mass for c, p in mass_of.items()}, mass

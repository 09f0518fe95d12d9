"""Judges that return 1-5 scores, from the answer text or from token probabilities.

Two ways to ask the same question:
- "text": one call returns a JSON object with an integer per dimension (any backend);
- "logprob": one forward pass per dimension, the expected score over the next-token
  probabilities of "1".."5" (local models, or servers with `top_logprobs`). Cheaper (one
  token instead of a JSON object) and calibrated: a hesitant 3-or-4 reads as 3.5, not as
  whichever digit won.
"auto" takes "logprob" when the backend offers token probabilities.

In "logprob" mode the judged material comes first and the dimension's question last, so
the prompts of one item differ only in their last lines: a local model runs the shared
part once for all of them (`HFGenerator.choice_probs`), and servers with prefix caching
(vLLM, OpenAI's cached input) reuse it.

A judge that fails on any dimension is a `GenError` for the item, never a default score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from pydantic import BaseModel

from ..models import ChatRequest, ChoiceRequest, GenError, Generator
from .prompts import messages

JUDGE_MODES = ("auto", "logprob", "text")


@dataclass(frozen=True)
class JudgeSpec:
    """A judge: its JSON-answer template and model, and one question per dimension."""

    template: str
    model: type[BaseModel]
    questions: dict[str, str]  # dimension -> question (str.format over the item's context)

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(self.questions)


@dataclass(frozen=True)
class Judged:
    scores: dict[str, float]
    mode: str
    reason: str | None = None
    mass: float | None = None  # logprob mode: least probability mass the digits got

    @property
    def mean(self) -> float:
        return sum(self.scores.values()) / len(self.scores)


def resolve_mode(mode: str, gen: Generator) -> str:
    if mode not in JUDGE_MODES:
        raise ValueError(f"unknown judge mode '{mode}': use one of {', '.join(JUDGE_MODES)}")
    if mode == "auto":
        return "logprob" if gen.supports_choice_probs else "text"
    return mode


def run_judge(gen: Generator, spec: JudgeSpec, mode: str, contexts: Sequence[dict[str, Any]],
              materials: Sequence[list[tuple[str, str]]], *, max_tokens: int = 256, min_mass: float = 0.0,
              on_done: Any = None) -> list[Judged | GenError]:
    """Judge every item; `contexts` fill the templates, `materials` are the tagged texts shown.

    In "logprob" mode an item whose digits got less than `min_mass` of the next-token
    probability is a failure (the model was not answering with a score; renormalising
    noise would make one up). In "auto" mode, items that failed because the server sends
    no log-probabilities are asked again as text judges.
    """
    resolved = resolve_mode(mode, gen)
    if resolved == "logprob":
        out = _logprob_judge(gen, spec, contexts, materials, min_mass)
        if mode == "auto":
            retry = [i for i, r in enumerate(out) if isinstance(r, GenError) and _no_logprobs(r)]
            if retry:
                again = _text_judge(gen, spec, [contexts[i] for i in retry], max_tokens)
                for i, r in zip(retry, again):
                    out[i] = r
    else:
        out = _text_judge(gen, spec, contexts, max_tokens)
    if on_done:
        for i, r in enumerate(out):
            on_done(i, r)
    return out


def _no_logprobs(err: GenError) -> bool:
    """The server answered but sent no log-probabilities (openai_chat's reason for it)."""
    return "returned no logprobs" in err.reason


def _text_judge(gen: Generator, spec: JudgeSpec, contexts: Sequence[dict[str, Any]], max_tokens: int) -> list[Judged | GenError]:
    reqs = [ChatRequest.of(messages(spec.template, **ctx), response_model=spec.model, max_tokens=max_tokens)
            for ctx in contexts]
    out: list[Judged | GenError] = []
    for r in gen.chat(reqs):
        if isinstance(r, GenError):
            out.append(r)
        else:
            out.append(Judged({d: float(r.data[d]) for d in spec.dims}, "text", r.data.get("reason")))
    return out


def _logprob_judge(gen: Generator, spec: JudgeSpec, contexts: Sequence[dict[str, Any]],
                   materials: Sequence[list[tuple[str, str]]], min_mass: float) -> list[Judged | GenError]:
    dims = spec.dims
    reqs = [ChoiceRequest.of(messages("judge_dimension", question=spec.questions[d].format(**ctx), material=mat))
            for ctx, mat in zip(contexts, materials) for d in dims]
    flat = gen.choice_probs(reqs)
    out = []
    for i in range(len(contexts)):
        parts = flat[i * len(dims):(i + 1) * len(dims)]
        errors = [(d, p.reason) for d, p in zip(dims, parts) if isinstance(p, GenError)]
        errors += [(d, f"the score digits got {p.mass:.3f} of the probability (min {min_mass}): not an answer")
                   for d, p in zip(dims, parts) if not isinstance(p, GenError) and p.mass < min_mass]
        if errors:
            out.append(GenError("; ".join(f"{d}: {why}" for d, why in errors)))
        else:
            out.append(Judged({d: p.expected() for d, p in zip(dims, parts)}, "logprob",
                              mass=min(p.mass for p in parts)))
    return out

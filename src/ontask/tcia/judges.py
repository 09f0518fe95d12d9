"""Judges that return 1-5 scores, from the answer text or from token probabilities.

Two ways to ask the same question:
- "text": one call returns a JSON object with an integer per dimension (any backend);
- "logprob": one forward pass per dimension, the expected score over the next-token
  probabilities of "1".."5" (local models, or servers with `top_logprobs`). Cheaper (one
  token instead of a JSON object) and calibrated: a hesitant 3-or-4 reads as 3.5, not as
  whichever digit won.
"auto" takes "logprob" when the backend offers token probabilities.

A judge that fails on any dimension is a `GenError` for the item, never a default score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from pydantic import BaseModel

from ..generation import ChatRequest, ChoiceRequest, GenError, Generator
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
              materials: Sequence[list[tuple[str, str]]], *, max_tokens: int = 256,
              on_done: Any = None) -> list[Judged | GenError]:
    """Judge every item; `contexts` fill the templates, `materials` are the tagged texts shown."""
    mode = resolve_mode(mode, gen)
    if mode == "text":
        reqs = [ChatRequest.of(messages(spec.template, **ctx), response_model=spec.model, max_tokens=max_tokens)
                for ctx in contexts]
        out: list[Judged | GenError] = []
        for r in gen.chat(reqs, on_result=on_done):
            if isinstance(r, GenError):
                out.append(r)
            else:
                out.append(Judged({d: float(r.data[d]) for d in spec.dims}, "text", r.data.get("reason")))
        return out
    dims = spec.dims
    reqs = [ChoiceRequest.of(messages("judge_dimension", question=spec.questions[d].format(**ctx), material=mat))
            for ctx, mat in zip(contexts, materials) for d in dims]
    flat = gen.choice_probs(reqs)
    out = []
    for i in range(len(contexts)):
        parts = flat[i * len(dims):(i + 1) * len(dims)]
        errors = [(d, p) for d, p in zip(dims, parts) if isinstance(p, GenError)]
        if errors:
            out.append(GenError("; ".join(f"{d}: {p.reason}" for d, p in errors)))
        else:
            out.append(Judged({d: p.expected() for d, p in zip(dims, parts)}, "logprob",
                              mass=min(p.mass for p in parts)))
        if on_done:
            on_done(i, out[-1])
    return out

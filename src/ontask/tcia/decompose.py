"""Step 1: instruction -> task type, base query, constraints (one structured call each).

The answer is constrained to / validated against `Decomposition` (or `SeedDecomposition`,
which allows exactly one task). A malformed answer is repaired or re-asked by the
backend; one that still fails is returned as a `GenError` with its reason, never dropped.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..models import ChatRequest, GenError, Generator
from .prompts import messages
from .schemas import Decomposition, SeedDecomposition, TaskItem
from .state import InstructionState


def decompose_request(instruction: str, *, seed: bool = False, max_tokens: int = 384) -> ChatRequest:
    return ChatRequest.of(messages("decompose", instruction=instruction, seed=seed),
                          response_model=SeedDecomposition if seed else Decomposition, max_tokens=max_tokens)


def decompose(gen: Generator, instructions: Sequence[str], *, seed: bool = False, max_tokens: int = 384,
              on_done: Any = None) -> list[dict[str, Any] | GenError]:
    """Validated decomposition dicts (categories normalised) or GenErrors, aligned with the input."""
    reqs = [decompose_request(text, seed=seed, max_tokens=max_tokens) for text in instructions]
    return [r if isinstance(r, GenError) else r.data for r in gen.chat(reqs, on_result=on_done)]


def states_of(decomposition: dict[str, Any]) -> list[InstructionState]:
    """One InstructionState per task of a validated decomposition."""
    langs = decomposition.get("languages") or ["en"]
    return [TaskItem.model_validate(t).state(langs) for t in decomposition["tasks"]]

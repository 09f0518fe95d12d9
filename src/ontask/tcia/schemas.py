"""The JSON answers TCIA asks models for, as pydantic models.

Their JSON schemas drive constrained decoding (local models) and `response_format`
(servers); the same models validate every answer. Strings and lists are bounded so a
constrained decoder always terminates, even with a weak model.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field, StringConstraints, create_model

from .state import Category, Constraint, InstructionState, normalise_category

Score = Annotated[int, Field(ge=1, le=5)]


def _language_code(v: object) -> object:
    """"EN", "en-US", "en_GB" -> "en" (ISO 639-1 primary subtag); anything else is left to the pattern."""
    return v.strip().replace("_", "-").split("-")[0].lower() if isinstance(v, str) else v


# Constraints first, validator after: pydantic then keeps the pattern in the JSON schema
# (the other order silently drops it, and the constrained decoder never sees it).
Language = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$", min_length=2, max_length=2),
                     BeforeValidator(_language_code)]


class ConstraintItem(BaseModel):
    text: str = Field(min_length=1, max_length=150)
    category: Annotated[Category, BeforeValidator(lambda v: normalise_category(v) if isinstance(v, str) else v)]


class TaskItem(BaseModel):
    task_type: str = Field(min_length=1, max_length=80, description="short name of the kind of task")
    base_query: str = Field(min_length=1, max_length=300, description="the goal with every constraint removed")
    constraints: list[ConstraintItem] = Field(max_length=6)

    def state(self, languages: list[str]) -> InstructionState:
        return InstructionState.make(self.task_type, self.base_query,
                                     (Constraint(c.text, c.category) for c in self.constraints), languages)


class Decomposition(BaseModel):
    """Step 1: any instruction -> one or more (task type, base query, constraints)."""

    is_complex: bool = Field(description="true when the instruction has explicit constraints")
    languages: list[Language] = Field(min_length=1, max_length=3)
    tasks: list[TaskItem] = Field(min_length=1, max_length=3)


class SeedDecomposition(BaseModel):
    """Step 1 for a seed: exactly one task (tcia.md: a seed task yields exactly one (T, Q, C))."""

    is_complex: bool
    languages: list[Language] = Field(min_length=1, max_length=3)
    tasks: list[TaskItem] = Field(min_length=1, max_length=1)


class Check(BaseModel):
    id: int = Field(ge=1, le=12, description="the constraint's number")
    satisfied: bool
    reason: str = Field(max_length=200)


class Verification(BaseModel):
    """Step 4: does the written instruction state each constraint?"""

    checks: list[Check] = Field(min_length=1, max_length=12)


@lru_cache(maxsize=None)
def verification_for(n: int) -> type[BaseModel]:
    """`Verification` with exactly one check per constraint (ids 1..n).

    A constrained decoder then cannot run on inventing checks 4, 5, 6... for three
    constraints (small models do), and a server model is told the exact shape.
    """
    check = create_model("Check", id=(int, Field(ge=1, le=n, description="the constraint's number")),
                         satisfied=(bool, ...), reason=(str, Field(max_length=120)))
    return create_model("Verification", __doc__=Verification.__doc__,
                        checks=(list[check], Field(min_length=n, max_length=n)))


class Validity(BaseModel):
    """Step 5, text judge: validity and self-consistency of one instruction."""

    validity: Score
    consistency: Score
    reason: str = Field(max_length=300)


class ResponseJudgement(BaseModel):
    """Step 6, text judge: the five dimensions of one answer."""

    quality: Score
    helpfulness: Score
    instruction_following: Score
    honesty: Score
    truthfulness: Score
    reason: str = Field(max_length=300)


class OnTask(BaseModel):
    """Metrics: is a generated instruction still the seed's task?"""

    on_task: Score
    reason: str = Field(max_length=200)


RESPONSE_DIMENSIONS = ("quality", "helpfulness", "instruction_following", "honesty", "truthfulness")
VALIDITY_DIMENSIONS = ("validity", "consistency")

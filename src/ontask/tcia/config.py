"""Every setting of an augmentation run, validated before any model is loaded or token spent.

Defaults follow tcia.md: the paper's values where it gives them (m = 10, K = 2,700,
k = 2,000, 3 hops, 5 inputs per instruction), the project's defaults where it is silent
(2 refinements, keep instructions whose validity and consistency are both >= 4, no
floor on answer scores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from ..models.roles import RoleModels
from ..models.spec import ModelSpec

from ..models.transport.rate import RateControl
from .judges import JUDGE_MODES


class AugmentConfig(RoleModels):
    model_config = ConfigDict(extra="forbid")
    chat_roles = ("decomposer", "composer", "verifier", "judge", "responders")

    # models, one per role (product.md "Models and roles")
    # (None: the `model` setting, else embedded; options per role under `models`)
    decomposer: str | None = None
    composer: str | None = None
    verifier: str | None = None
    judge: str | None = None
    responders: list[str] = Field(default_factory=list)
    embedder: str = "embedded"
    base_url: str | None = None
    concurrency: int = Field(64, ge=1, description="the most in-flight requests per server model")
    batch: bool = Field(False, description="every server chat role through its provider's batch API (a role's own "
                                           "`batch` option wins)")
    # Starts at `concurrency` in flight, not the generic half of it: a run's first wave (every
    # sampled state's compose) would otherwise go out in two, costing a round trip; a server
    # that refuses that many still halves it at once (AIMD).
    rate: RateControl = Field(default_factory=lambda: RateControl(initial=None),
                              description="adaptive concurrency and budgets (openai: models)")
    # where local models (embedded, hf:, vllm:) run; answers are the same either way
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = Field(None, description="join this Ray cluster (none: start a local Ray)")
    workers: int | None = Field(None, ge=1, description="ray: actors per local model (default: the cluster shared between them)")
    worker_cpus: float | None = Field(None, gt=0, description="ray: CPUs per actor (default 1)")
    worker_gpus: float | None = Field(None, ge=0, description="ray: GPUs per actor (default 1 when the cluster has GPUs)")
    local_repetition_penalty: float = Field(1.0, ge=1.0, le=2.0, description="embedded/hf: penalty on free-text answers")
    db: Path | None = Field(None, description="constraint database folder (ontask db build)")
    # Steps 4-6 stream when every role is a server model: each state moves on as its calls
    # return. False: stage by stage (each stage waits for all its calls). Same files either way.
    streaming: bool = Field(True, description="server models: each state moves on as its calls return (same output)")

    # step 3: search
    hops: int = Field(3, ge=1, le=100)
    per_op: int = Field(10, ge=1, le=10_000, description="m: draws per operation per expanded state")
    max_states: int = Field(2700, ge=1, description="K: stop after this many unique states")
    samples: int = Field(2000, ge=1, description="k: states kept for writing")
    near_duplicate: float = Field(0.95, gt=0, le=1)
    seed: int = 0

    # step 4: compose, verify, refine
    max_refinements: int = Field(2, ge=0)
    compose_max_tokens: int = Field(256, ge=16)

    # step 5: validate, pair
    judge_mode: str = "auto"
    min_choice_mass: float = Field(0.5, ge=0, le=1, description="logprob judges: least probability on the digits")
    min_validity: float = Field(4.0, ge=0, le=5)
    min_consistency: float = Field(4.0, ge=0, le=5)
    inputs_per_instruction: int = Field(5, ge=1)

    # step 6: respond, judge, keep the best
    response_max_tokens: int = Field(512, ge=16)
    response_temperature: float = Field(0.0, ge=0)
    min_response_score: float | None = Field(None, ge=1, le=5, description="floor on the best answer's mean")
    check: bool = Field(True, description="drop answers that violate a code-checkable constraint before the judge")

    # metrics
    on_task: bool = True
    on_task_decompose: bool = Field(True, description="also decompose each instruction and compare task types")
    on_task_min_judge: float = Field(4.0, ge=1, le=5)
    on_task_min_similarity: float = Field(0.5, ge=-1, le=1)

    @field_validator("judge_mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in JUDGE_MODES:
            raise ValueError(f"judge_mode must be one of {', '.join(JUDGE_MODES)}")
        return v

    @field_validator("responders", mode="before")
    @classmethod
    def _split(cls, v):
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    def roles(self) -> dict[str, ModelSpec]:
        """Every role's full model spec (responders as responder_0, responder_1, ...)."""
        return {role: self.spec_for(role) for role in self.role_names()}

    def role_defaults(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "concurrency": self.concurrency, "batch": self.batch or None}

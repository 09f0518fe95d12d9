"""Settings of `ontask score`, validated before any model is loaded."""

from __future__ import annotations

import os
from typing import Any, Iterator, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from ..io import read_examples
from ..models.roles import RoleModels
from ..records import Example, Failure

Metric = Literal["ppl", "ifd", "ifd_ppl", "tss", "tss++"]
ALL_METRICS: tuple[str, ...] = ("ppl", "ifd", "ifd_ppl", "tss", "tss++")


class ScoreConfig(RoleModels):
    """Everything that decides what `score` computes (and so what its cache keys cover)."""

    model_config = ConfigDict(extra="forbid")
    chat_roles = ("decomposer", "composer", "verifier")
    scoring_roles = ("scorer",)

    metrics: list[Metric] = Field(default_factory=lambda: ["ppl", "ifd", "tss", "tss++"])
    alternatives: Literal["random", "hard", "variants"] = "random"
    k: int = Field(4, ge=1, le=64, description="alternative instructions per row")
    aggregator: Literal["logmeanexp", "mean", "max"] = "logmeanexp"
    # TSS++ (README, Definitions; chosen on dev data by benchmarks/bench_tss.py): TSS against
    # the k alternatives under which the output is most likely among the `hard_pool`
    # nearest instructions by embedding, z-scored, plus lam x z(quality) when a quality is set.
    hard_pick: Literal["likelihood", "embedding"] = Field(
        "likelihood", description="TSS++: the k most likely of the hard_pool nearest (likelihood) or the k nearest")
    hard_pool: int = Field(8, ge=1, le=64, description="TSS++ with hard_pick likelihood: nearest instructions scored")
    quality: Literal["none", "lp", "1-ifd"] = Field("none", description="TSS++ quality term (none: TSS_hard alone)")
    lam: float = Field(0.0, ge=0, description="TSS++ weight of the quality term")
    near_duplicate: float = Field(0.95, gt=0, le=1, description="hard alternatives above this cosine are skipped")
    seed: int = 0
    scorer: str | None = Field(None, description="default: the `model` setting, else embedded")
    embedder: str = "embedded"
    chunk_rows: int = Field(128, ge=1, description="rows per unit of work (and of resume)")
    batch_tokens: int | None = Field(None, ge=64, description="tokens per forward batch, padded or (fused CPU forward) distinct (default: the "
                                     "scorer's own, 1024 on the fused CPU forward, else 2048)")
    share_prefix: bool = True
    base_url: str | None = None
    batch: bool = Field(False, description="server models (openai: scorer and chat roles) through the provider's "
                                           "batch API (a role's own `batch` option wins)")
    columns: dict[str, str] | None = None
    limit: int | None = Field(None, ge=1, description="score only the first N rows (try a slice first)")
    sample: int | None = Field(None, ge=1, description="score N rows drawn at random (seeded by seed), in file order")
    max_tokens_spent: int | None = Field(None, ge=1, description="stop (resumably) once the passes computed reach N tokens")
    max_cost: float | None = Field(None, gt=0, description="stop (resumably) once the scorer's spent cost reaches this (USD)")
    # `variants` alternatives (TCIA's Remove/Replace of one constraint; tcia/variants.py)
    decomposer: str | None = None
    composer: str | None = None
    verifier: str | None = None
    db: str | None = Field(None, description="constraint database for Replace variants (none: Remove only)")
    variant_refinements: int = Field(1, ge=0, le=4)
    compose_max_tokens: int = Field(256, ge=16)
    check: bool = Field(True, description="verify outputs against code-checkable constraints (IFEval checkers)")
    # where the passes run (results are the same either way)
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = Field(None, description="join this Ray cluster (none: start a local Ray)")
    workers: int | None = Field(None, ge=1, description="ray: scorer actors (default: one per GPU, else per worker_cpus cores)")
    worker_cpus: float | None = Field(None, gt=0, description="ray: CPUs per actor (default 1)")
    worker_gpus: float | None = Field(None, ge=0, description="ray: GPUs per actor (default 1 when the cluster has GPUs)")

    @field_validator("metrics")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("choose at least one metric")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _one_slice(self) -> "ScoreConfig":
        if self.limit is not None and self.sample is not None:
            raise ValueError("give --limit N or --sample N, not both")
        if (self.max_cost or self.max_tokens_spent) and self.engine != "local":
            raise ValueError("--max-cost and --max-tokens-spent stop the local engine only (not --engine ray)")
        if self.quality == "none" and self.lam > 0:
            raise ValueError(f"lam={self.lam} weighs TSS++'s quality term, but quality is none: set quality lp or 1-ifd")
        if self.max_cost is not None and self.spec_for("scorer").cost(1) is None:
            raise ValueError("--max-cost needs the scorer's price: set models.scorer.input_price "
                             "(USD per million tokens) in the settings or --model-option scorer.input_price=X")
        return self

    def role_defaults(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "batch": self.batch or None}

    def rows(self, path: str | os.PathLike, chunk_size: int = 1024) -> Iterator[list[Example | Failure]]:
        """The input's rows as this run reads them: every row, the first `limit`, or a `sample`."""
        return read_examples(path, self.columns, chunk_size, limit=self.limit, sample=self.sample, seed=self.seed)

    @property
    def passes_per_row(self) -> int:
        """Passes a row needs at most (fewer when hard alternatives skip near duplicates)."""
        return 1 + int(self.needs_empty) + sum(self.hard_count if kind == "hard" else self.k
                                               for kind in self.alternative_kinds)

    @property
    def hard_count(self) -> int:
        """Nearest instructions scored per row: the pool TSS++ picks from, else k."""
        return max(self.k, self.hard_pool) if "tss++" in self.metrics and self.hard_pick == "likelihood" else self.k

    def tss_pp_definition(self) -> str:
        """What this run's TSS++ is, in words (printed by `ontask score`, kept in run.json)."""
        picked = (f"the {self.k} most likely of the {self.hard_count} nearest instructions (embedding)"
                  if self.hard_pick == "likelihood" else f"the {self.k} nearest instructions (embedding)")
        quality = "no quality term" if self.quality == "none" else f"+ {self.lam} x z({self.quality})"
        return f"z(TSS against {picked}), {quality}"

    @property
    def needs_empty(self) -> bool:
        return bool({"ifd", "ifd_ppl"} & set(self.metrics)) or (
            "tss++" in self.metrics and self.quality == "1-ifd"
        )

    @property
    def alternative_kinds(self) -> list[str]:
        """Which alternative sets must be scored: `tss` uses the chosen kind, TSS++ hard."""
        kinds = []
        if "tss" in self.metrics:
            kinds.append(self.alternatives)
        if "tss++" in self.metrics and "hard" not in kinds:
            kinds.append("hard")
        return kinds


def parse_metrics(text: str) -> list[str]:
    items = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in items if m not in ALL_METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {', '.join(bad)}; choose from {', '.join(ALL_METRICS)}")
    return items

"""Settings of `ontask report`: limits that keep a report small and quick to open at any size."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str | None = Field(None, description="Page title (default: what the report covers and the folder name).")
    rows_per_group: int = Field(50, ge=1, le=5000, description="Top, bottom and borderline rows shown in the table.")
    scatter_points: int = Field(4000, ge=10, le=200_000, description="Rows drawn in the TSS-IFD scatter (a seeded sample).")
    tree_nodes: int = Field(3000, ge=10, le=200_000, description="Lineage states shown (the furthest-reaching first).")
    seed: int = Field(0, description="Seed of the scatter's sample.")

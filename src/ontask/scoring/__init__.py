"""Scoring: TSS, TSS++, IFD and perplexity (tss.md), streamed and cached."""

from .config import ALL_METRICS, ScoreConfig, parse_metrics
from .pipeline import run_score

__all__ = ["ALL_METRICS", "ScoreConfig", "parse_metrics", "run_score"]

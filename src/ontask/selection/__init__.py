"""Selection: keep the best-scored rows under a row-share or token budget."""

from .select import SelectConfig, run_select

__all__ = ["SelectConfig", "run_select"]

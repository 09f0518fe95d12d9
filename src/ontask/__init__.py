"""ontask: task-specific instruction-tuning data (TCIA augmentation, TSS/IFD scoring).

    import ontask
    scored = ontask.score(rows, metrics=["ppl", "ifd", "tss"])   # a list of dicts, DataFrame, Dataset or path
    top = ontask.select(scored, by="tss", retain=0.5)            # top.dataset: a datasets.Dataset

The functions load on first use, so `import ontask` stays light (no torch, no models).
"""

from typing import Any

from ._version import __version__

__all__ = ["Result", "__version__", "score", "select"]


def __getattr__(name: str) -> Any:
    if name in ("score", "select", "Result"):
        from . import python_api

        return getattr(python_api, name)
    raise AttributeError(f"module 'ontask' has no attribute {name!r}")

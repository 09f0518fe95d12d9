"""ontask: task-specific instruction-tuning data (TCIA augmentation, TSS/IFD scoring).

    import ontask
    scored = ontask.score(rows, metrics=["ppl", "ifd", "tss"])   # a list of dicts, DataFrame, Dataset or path
    top = ontask.select(scored, by="tss", retain=0.5)            # top.dataset: a datasets.Dataset
    ontask.export(top, "train.jsonl", format="messages")         # + train.README.md, the dataset card

The functions load on first use, so `import ontask` stays light (no torch, no models).
"""

from typing import Any

from ._version import __version__

__all__ = ["Result", "__version__", "augment", "decompose", "estimate", "export", "report", "score", "select"]
_API = ("Result", "augment", "decompose", "estimate", "score", "select")


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import python_api

        return getattr(python_api, name)
    raise AttributeError(f"module 'ontask' has no attribute {name!r}")


# `ontask.export` and `ontask.report` are also subpackages: importing one (the CLI does) binds
# the module to the name, and the lazy lookup above would never run. So the subpackages are
# imported first and the functions bound over them (none of this imports torch).
import importlib as _importlib  # noqa: E402  (`from . import export` would ask __getattr__ above)

for _sub in ("export", "report"):
    _importlib.import_module(f"{__name__}.{_sub}")
from .python_api import export, report  # noqa: E402

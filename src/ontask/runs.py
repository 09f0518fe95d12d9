"""Where a command writes: its data file and, beside it, run.json and failed.jsonl."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from ._version import __version__


WRITTEN_FORMATS = (".jsonl", ".parquet")


def check_output_name(out: str | os.PathLike) -> None:
    """Refuse, before any work, an output whose name asks for a format ontask does not write
    (`-o out.csv` must not silently get JSON lines)."""
    path = Path(out)
    if path.suffix and path.suffix.lower() not in WRITTEN_FORMATS and not path.is_dir():
        raise ValueError(f"{path}: ontask writes {' or '.join(WRITTEN_FORMATS)} files (or a folder, given without "
                         f"a suffix), not {path.suffix}: name the output e.g. {path.with_suffix('.jsonl').name}")


@dataclass(frozen=True)
class RunPaths:
    output: Path

    @classmethod
    def at(cls, out: str | os.PathLike) -> "RunPaths":
        """`out` may be a file (`scored.jsonl`, `.parquet`) or a folder (then `data.jsonl`)."""
        out = Path(out)
        check_output_name(out)
        if out.is_dir() or not out.suffix:
            out = out / "data.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        return cls(out)

    @property
    def dir(self) -> Path:
        return self.output.parent

    @property
    def manifest(self) -> Path:
        return self.dir / "run.json"

    @property
    def failed(self) -> Path:
        return self.dir / "failed.jsonl"

    @property
    def failed_partial(self) -> Path:
        """Failures of the run in progress; replaces `failed` when the output is written."""
        return self.dir / "failed.jsonl.partial"

    @property
    def dropped(self) -> Path:
        return self.dir / "dropped.jsonl"

    @property
    def spool(self) -> Path:
        return self.dir / f".{self.output.name}.spool.jsonl"


def versions() -> dict[str, str]:
    """Versions of ontask and the libraries that change results, for manifests."""
    import importlib.metadata as md

    out = {"ontask": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "sentence-transformers", "numpy", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out

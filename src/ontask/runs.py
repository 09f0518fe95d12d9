"""Where a command writes: its data file and, beside it, side files named after it.

A side file belongs to one output: `-o scored.jsonl` writes `scored.run.json` and
`scored.failed.jsonl` (`select` adds `top.select.json` and `top.dropped.jsonl`), so two
outputs in one folder never overwrite each other's manifests or failures. An output named
`data.*` (what a folder output gets) owns its folder and its side files drop the stem:
`run.json`, `failed.jsonl`, `select.json`, `dropped.jsonl`.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from ._version import __version__


WRITTEN_FORMATS = (".jsonl", ".parquet", ".csv")


def check_output_name(out: str | os.PathLike, formats: tuple[str, ...] = WRITTEN_FORMATS) -> None:
    """Refuse, before any work, an output whose name asks for a format ontask does not write
    (`-o out.txt` must not silently get JSON lines)."""
    path = Path(out)
    if path.suffix and path.suffix.lower() not in formats and not path.is_dir():
        raise ValueError(f"{path}: ontask writes {', '.join(formats)} files (or a folder, given without "
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
        return side_file(self.output, "run.json")

    @property
    def failed(self) -> Path:
        return side_file(self.output, "failed.jsonl")

    @property
    def failed_partial(self) -> Path:
        """Failures of the run in progress; replaces `failed` when the output is written."""
        return self.failed.with_name(self.failed.name + ".partial")

    @property
    def dropped(self) -> Path:
        return side_file(self.output, "dropped.jsonl")

    @property
    def select_manifest(self) -> Path:
        return side_file(self.output, "select.json")

    @property
    def spool(self) -> Path:
        return self.dir / f".{self.output.name}.spool.jsonl"


def side_file(output: str | os.PathLike, name: str) -> Path:
    """The side file `name` (run.json, failed.jsonl, select.json, dropped.jsonl) of `output`."""
    output = Path(output)
    if output.stem == "data":
        return output.parent / name
    return output.parent / f"{output.stem}.{name}"


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

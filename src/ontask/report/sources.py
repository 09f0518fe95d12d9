"""Find what a report is made from: the manifests and data files of one or more runs.

`ontask report` takes whatever a user has at hand: an augment run folder, a score or
select output folder, the demo's folder that holds all three, or a single scored data
file. Each command leaves a manifest beside its data (`run.json` for augment and score,
`select.json` for select), and the manifests name their inputs and outputs, so from any
one of these the rest of the chain can be found.

Manifests record paths as the user typed them (often relative to the folder the command
ran in), so a recorded path is looked for relative to the manifest's own folder first and
then as given, which keeps a moved or copied run folder readable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import InputError

DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")


@dataclass
class ReportSources:
    """Everything a report can show, each part optional but at least one present."""

    source: Path
    augment_dir: Path | None = None
    augment_manifest: dict[str, Any] | None = None
    scored_file: Path | None = None
    score_manifest: dict[str, Any] | None = None
    select_manifest: dict[str, Any] | None = None
    select_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def dropped_file(self) -> Path | None:
        return self.select_dir / "dropped.jsonl" if self.select_dir else None


def find_sources(path: str | Path) -> ReportSources:
    """Resolve `path` (a run folder, the demo's folder, or a data file) to its runs."""
    path = Path(path)
    if not path.exists():
        raise InputError(str(path), "no such file or folder")
    src = ReportSources(source=path)
    if path.is_file():
        _from_data_file(src, path)
    else:
        _from_folder(src, path)
        if not _found_anything(src):
            for sub in sorted(p for p in path.iterdir() if p.is_dir()):
                _from_folder(src, sub)
    if src.select_manifest is not None and src.scored_file is None:
        src.scored_file = _recorded_path(src.select_manifest.get("input"), src.select_dir)
        if src.scored_file is None:
            src.notes.append(f"the scored file that {src.select_dir}/select.json names was not found")
    if src.scored_file is not None and src.score_manifest is None:
        manifest = _read_manifest(src.scored_file.parent / "run.json")
        if manifest and manifest.get("command") == "score":
            src.score_manifest = manifest
    if not _found_anything(src):
        raise InputError(
            str(path), "nothing to report on; give a run folder of `ontask augment`, `ontask score` "
            "or `ontask select` (one with run.json or select.json), the demo's folder, or a scored data file")
    return src


def _found_anything(src: ReportSources) -> bool:
    return any(x is not None for x in (src.augment_dir, src.scored_file, src.select_manifest))


def _from_folder(src: ReportSources, folder: Path) -> None:
    manifest = _read_manifest(folder / "run.json")
    if manifest is not None:
        command = manifest.get("command")
        if command == "augment" and src.augment_dir is None:
            src.augment_dir, src.augment_manifest = folder, manifest
        elif command == "score" and src.score_manifest is None:
            src.score_manifest = manifest
            src.scored_file = _recorded_path(manifest.get("output"), folder) or _default_data(folder)
    select = _read_manifest(folder / "select.json")
    if select is not None and src.select_manifest is None:
        src.select_manifest, src.select_dir = select, folder


def _from_data_file(src: ReportSources, file: Path) -> None:
    if file.suffix.lower() not in DATA_SUFFIXES:
        raise InputError(str(file), f"not a data file ({', '.join(DATA_SUFFIXES)}) or a run folder")
    beside = file.parent
    select = _read_manifest(beside / "select.json")
    if select is not None:  # a selection's kept rows: report on everything it chose from
        src.select_manifest, src.select_dir = select, beside
        return
    manifest = _read_manifest(beside / "run.json")
    if manifest is not None and manifest.get("command") == "augment":
        src.augment_dir, src.augment_manifest = beside, manifest
        return
    src.scored_file = file


def _default_data(folder: Path) -> Path | None:
    candidate = folder / "data.jsonl"
    return candidate if candidate.exists() else None


def _recorded_path(recorded: Any, manifest_dir: Path | None) -> Path | None:
    """A path from a manifest, looked for where the manifest is first, then as written.

    Beside the manifest first: in a copied or moved run folder the recorded path may still
    exist but point at the original, and the copy is what the user asked about.
    """
    if not recorded:
        return None
    p = Path(str(recorded))
    candidates = []
    if manifest_dir is not None:
        candidates += [manifest_dir.parent / p.parent.name / p.name, manifest_dir / p.name]
    candidates.append(p)
    for c in candidates:
        if c.is_file():
            return c
    return None


def _read_manifest(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(str(path), f"not a readable manifest ({err})") from err
    if not isinstance(data, dict):
        raise InputError(str(path), f"a manifest must be a JSON object, got {type(data).__name__}")
    return data

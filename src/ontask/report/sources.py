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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.manifests import read_manifest, recorded_path
from ..records import InputError
from ..runs import side_file

DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")


@dataclass
class ReportSources:
    """Everything a report can show, each part optional but at least one present."""

    source: Path
    augment_dir: Path | None = None
    augment_manifest: dict[str, Any] | None = None
    scored_file: Path | None = None
    score_manifest: dict[str, Any] | None = None
    score_manifest_file: Path | None = None
    select_manifest: dict[str, Any] | None = None
    select_manifest_file: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def dropped_file(self) -> Path | None:
        if self.select_manifest is None or self.select_manifest_file is None:
            return None
        return recorded_path(self.select_manifest.get("dropped"), self.select_manifest_file.parent)

    @property
    def score_failed_file(self) -> Path | None:
        if self.scored_file is None:
            return None
        recorded = recorded_path((self.score_manifest or {}).get("failed"), self.scored_file.parent)
        return recorded or side_file(self.scored_file, "failed.jsonl")


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
        folder = src.select_manifest_file.parent if src.select_manifest_file else None
        src.scored_file = recorded_path(src.select_manifest.get("input"), folder)
        if src.scored_file is None:
            src.notes.append(f"the scored file that {src.select_manifest_file} names was not found")
    if src.scored_file is not None and src.score_manifest is None:
        manifest_file = side_file(src.scored_file, "run.json")
        manifest = read_manifest(manifest_file)
        if manifest and manifest.get("command") == "score" and _belongs(manifest, src.scored_file):
            src.score_manifest, src.score_manifest_file = manifest, manifest_file
    if not _found_anything(src):
        raise InputError(
            str(path), "nothing to report on; give a run folder of `ontask augment`, `ontask score` "
            "or `ontask select` (one with run.json or select.json), the demo's folder, or a scored data file")
    return src


def _found_anything(src: ReportSources) -> bool:
    return any(x is not None for x in (src.augment_dir, src.scored_file, src.select_manifest))


def _from_folder(src: ReportSources, folder: Path) -> None:
    manifest = read_manifest(folder / "run.json")
    if manifest is not None:
        command = manifest.get("command")
        if command == "augment" and src.augment_dir is None:
            src.augment_dir, src.augment_manifest = folder, manifest
        elif command == "score" and src.score_manifest is None:
            src.score_manifest, src.score_manifest_file = manifest, folder / "run.json"
            src.scored_file = recorded_path(manifest.get("output"), folder) or _default_data(folder)
    select = read_manifest(folder / "select.json")
    if select is not None and src.select_manifest is None:
        src.select_manifest, src.select_manifest_file = select, folder / "select.json"


def _from_data_file(src: ReportSources, file: Path) -> None:
    """A data file's own manifests are its side files (`top.select.json`, `scored.run.json`,
    or `select.json`/`run.json` beside a `data.*`); one that names another output is refused."""
    if file.suffix.lower() not in DATA_SUFFIXES:
        raise InputError(str(file), f"not a data file ({', '.join(DATA_SUFFIXES)}) or a run folder")
    select_file, run_file = side_file(file, "select.json"), side_file(file, "run.json")
    select, manifest = read_manifest(select_file), read_manifest(run_file)
    for found, where in ((select, select_file), (manifest, run_file)):
        if found is not None and not _belongs(found, file):
            raise InputError(str(file), f"{where} is the manifest of {found.get('output')}, not of this file; "
                             "give the output that manifest names, or move the file to its own folder")
    if select is not None:  # a selection's kept rows: report on everything it chose from
        src.select_manifest, src.select_manifest_file = select, select_file
        return
    if manifest is not None and manifest.get("command") == "augment":
        src.augment_dir, src.augment_manifest = file.parent, manifest
        return
    src.scored_file = file


def _belongs(manifest: dict[str, Any], file: Path) -> bool:
    """Whether `manifest` was written for `file`: the output it records has the file's name
    (an augment run's manifest records its folder's data files by name too)."""
    recorded = manifest.get("output")
    if manifest.get("command") == "augment":
        outputs = (manifest.get("outputs") or {}).values()
        return any(Path(str(o)).name == file.name for o in outputs) or not outputs
    return recorded is None or Path(str(recorded)).name == file.name


def _default_data(folder: Path) -> Path | None:
    candidate = folder / "data.jsonl"
    return candidate if candidate.exists() else None

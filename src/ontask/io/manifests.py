"""Reading the manifests commands leave beside their outputs (run.json, select.json, ...).

Manifests record paths as the user typed them (often relative to the folder the command
ran in), so a recorded path is looked for beside the manifest first and then as written:
in a copied or moved run folder the recorded path may still exist but point at the
original, and the copy is what the user asked about. `report` and `export` both walk them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..records import InputError


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A manifest's content, None if there is none; an unreadable one is an error naming it."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(str(path), f"not a readable manifest ({err})") from err
    if not isinstance(data, dict):
        raise InputError(str(path), f"a manifest must be a JSON object, got {type(data).__name__}")
    return data


def recorded_path(recorded: Any, manifest_dir: Path | None, *, run_folders: bool = False) -> Path | None:
    """The file a manifest names, beside the manifest first, then as written; None when it is
    not found. `run_folders`: a recorded run folder stands for its `data.jsonl`."""
    if not recorded:
        return None
    p = Path(str(recorded))
    candidates = [manifest_dir.parent / p.parent.name / p.name, manifest_dir / p.name] if manifest_dir else []
    for candidate in (*candidates, p):
        if run_folders and candidate.is_dir() and (candidate / "data.jsonl").is_file():
            return candidate / "data.jsonl"
        if candidate.is_file():
            return candidate
    return None

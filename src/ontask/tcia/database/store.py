"""Files of a saved constraint database: the manifest, the data folder it names, shape checks."""

from __future__ import annotations


import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from .common import DATA_PREFIX, MANIFEST
from .records import DatabaseError


def write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())


def _valid_data_name(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(DATA_PREFIX) and Path(name).name == name and "\\" not in name


def data_dir(path: Path, meta: Mapping[str, Any]) -> Path:
    if not _valid_data_name(meta.get("data")):
        raise DatabaseError(f"{path}: constraint database manifest names no valid data folder")
    return path / meta["data"]


def previous_data_dir(target: Path) -> Path | None:
    """The data folder the current manifest names, if there is a readable one."""
    try:
        name = json.loads((target / MANIFEST).read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return target / name if _valid_data_name(name) else None


def read_manifest(path: Path) -> dict[str, Any]:
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise DatabaseError(f"{path}: no constraint database here ({MANIFEST} missing); build one with `ontask db build`")
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DatabaseError(f"{manifest}: unreadable manifest ({exc})") from None
    if not isinstance(meta, dict):
        raise DatabaseError(f"{manifest}: unreadable manifest (not an object)")
    return meta


def check_shapes(path: Path, a: Mapping[str, np.ndarray], types: list, cons: list, meta: Mapping[str, Any]) -> None:
    n_types, n_cons, n_clusters = len(types), len(cons), len(a["centroids"])
    problems = []
    if a["type_vecs"].shape != (n_types, meta.get("dim")) or len(a["type_cluster"]) != n_types:
        problems.append("task-type arrays do not match task_types.json")
    if a["constraint_vecs"].shape[0] != n_cons or len(a["constraint_category"]) != n_cons:
        problems.append("constraint arrays do not match constraints.json")
    if len(a["cluster_indptr"]) != n_clusters + 1 or int(a["cluster_indptr"][-1]) != len(a["cluster_constraints"]):
        problems.append("cluster index is inconsistent")
    if problems:
        raise DatabaseError(f"{path}: constraint database is corrupt: {'; '.join(problems)}")

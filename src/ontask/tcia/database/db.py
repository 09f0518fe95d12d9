"""The constraint database as the search uses it: clusters, their constraints, nearest-neighbour
queries (faiss, built lazily), and saving / loading (atomic, version- and embedder-checked)."""

from __future__ import annotations


import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..state import CATEGORIES, Constraint, normalise_text
from .common import DATA_PREFIX, FORMAT_VERSION, MANIFEST, ARRAYS
from .records import DatabaseError
from .store import check_shapes, data_dir, previous_data_dir, read_manifest, write_json


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """A task-type cluster: its id, representative type, member types and constraint count."""

    cluster: int
    task_type: str
    members: tuple[str, ...]
    n_constraints: int

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "task_type": self.task_type, "members": list(self.members),
                "n_constraints": self.n_constraints}


class ConstraintDB:
    """Read-only constraint database: cluster retrieval and per-cluster constraint search."""

    def __init__(self, arrays: Mapping[str, np.ndarray], type_texts: Sequence[str], con_texts: Sequence[str],
                 meta: Mapping[str, Any], simplified: Sequence[str | None] | None = None,
                 simplified_path: Path | None = None) -> None:
        self._a = dict(arrays)
        self._types, self._cons = list(type_texts), list(con_texts)
        self.meta = dict(meta)
        self._simplified = list(simplified) if simplified is not None else None
        self._simplified_path = simplified_path
        self._objs: dict[int, Constraint] = {}
        self._lists: dict[int, list[Constraint]] = {}
        self._indexes: dict[int, Any] = {}
        self._members: list[list[int]] | None = None
        self._type_keys: dict[str, int] | None = None
        self._con_keys: dict[str, int] | None = None
        self.load_seconds: float | None = None

    # ---- sizes and description
    @property
    def embedder_name(self) -> str:
        return str(self.meta["embedder"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def n_records(self) -> int:
        return int(self.meta["records"])

    @property
    def n_task_types(self) -> int:
        return len(self._types)

    @property
    def n_clusters(self) -> int:
        return len(self._a["centroids"])

    @property
    def n_constraints(self) -> int:
        return len(self._cons)

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    def describe(self) -> dict[str, Any]:
        """What run.json records about the database."""
        return {
            "format_version": self.meta["format_version"], "embedder": self.embedder_name, "dim": self.dim,
            "records": self.n_records, "task_types": self.n_task_types, "clusters": self.n_clusters,
            "constraints": self.n_constraints, "cluster_constraints": int(len(self._a["cluster_constraints"])),
            "eps": self.meta["eps"], "min_samples": self.meta["min_samples"],
            "near_duplicate": self.meta["near_duplicate"], "folded_near_duplicates": self.meta["folded_near_duplicates"],
            "build_seconds": self.meta["build_seconds"], "fingerprint": self.fingerprint,
        }

    # ---- task types
    def nearest_cluster_with_score(self, task_type_vec: np.ndarray) -> tuple[int, float]:
        """The cluster whose centroid is most cosine-similar to the vector (ties: lowest id)."""
        sims = self._a["centroids"] @ _query_vec(task_type_vec, self.dim)
        best = int(np.argmax(sims))
        return best, float(sims[best])

    def nearest_cluster(self, task_type_vec: np.ndarray) -> int:
        return self.nearest_cluster_with_score(task_type_vec)[0]

    def cluster_of_task_type(self, task_type: str) -> int | None:
        """The cluster of a task type present in the database (by normalised text), else None."""
        if self._type_keys is None:
            self._type_keys = {normalise_text(t): i for i, t in enumerate(self._types)}
        found = self._type_keys.get(normalise_text(task_type))
        return None if found is None else int(self._a["type_cluster"][found])

    def cluster_info(self, cluster: int) -> ClusterInfo:
        self._check_cluster(cluster)
        if self._members is None:
            self._members = [[] for _ in range(self.n_clusters)]
            for i, c in enumerate(self._a["type_cluster"].tolist()):
                self._members[c].append(i)
        members = tuple(self._types[i] for i in self._members[cluster])
        rep = self._types[int(self._a["cluster_rep"][cluster])]
        indptr = self._a["cluster_indptr"]
        return ClusterInfo(cluster, rep, members, int(indptr[cluster + 1] - indptr[cluster]))

    # ---- constraints
    def constraints(self, cluster: int) -> list[Constraint]:
        """The cluster's constraints in a stable order (first seen in the corpus)."""
        self._check_cluster(cluster)
        if cluster not in self._lists:
            self._lists[cluster] = [self._constraint(int(i)) for i in self._ids(cluster)]
        return list(self._lists[cluster])

    def constraint_counts(self, cluster: int) -> list[tuple[Constraint, int]]:
        """The cluster's constraints with how many of its records use each (after folding)."""
        lo, hi = self._span(cluster)
        return list(zip(self.constraints(cluster), self._a["cluster_counts"][lo:hi].tolist()))

    def similar_constraints(self, cluster: int, vec: np.ndarray, k: int) -> list[tuple[Constraint, float]]:
        """The k constraints of the cluster most cosine-similar to `vec`, nearest first."""
        self._check_cluster(cluster)
        ids = self._ids(cluster)
        k = min(int(k), len(ids))
        if k <= 0:
            return []
        sims, pos = self._index(cluster).search(_query_vec(vec, self.dim)[None, :], k)
        pairs = sorted(((float(s), int(p)) for s, p in zip(sims[0], pos[0]) if p >= 0), key=lambda sp: (-sp[0], sp[1]))
        return [(self._constraint(int(ids[p])), s) for s, p in pairs]

    def simplified_query(self, constraint: Constraint) -> str | None:
        """A simplified query recorded for this constraint's text, if the corpus had one."""
        if self._simplified is None:
            self._simplified = self._read_simplified()
        if self._con_keys is None:
            self._con_keys = {normalise_text(t): i for i, t in enumerate(self._cons)}
        found = self._con_keys.get(constraint.key)
        return None if found is None else self._simplified[found]

    # ---- internals
    def _check_cluster(self, cluster: int) -> None:
        if not 0 <= cluster < self.n_clusters:
            raise IndexError(f"cluster {cluster} out of range (database has {self.n_clusters})")

    def _span(self, cluster: int) -> tuple[int, int]:
        self._check_cluster(cluster)
        indptr = self._a["cluster_indptr"]
        return int(indptr[cluster]), int(indptr[cluster + 1])

    def _ids(self, cluster: int) -> np.ndarray:
        lo, hi = self._span(cluster)
        return self._a["cluster_constraints"][lo:hi]

    def _constraint(self, cid: int) -> Constraint:
        obj = self._objs.get(cid)
        if obj is None:
            obj = self._objs[cid] = Constraint(self._cons[cid], CATEGORIES[int(self._a["constraint_category"][cid])])
        return obj

    def _index(self, cluster: int) -> Any:
        index = self._indexes.get(cluster)
        if index is None:
            import faiss

            index = faiss.IndexFlatIP(self.dim)
            index.add(np.ascontiguousarray(self._a["constraint_vecs"][self._ids(cluster)], dtype=np.float32))
            self._indexes[cluster] = index
        return index

    def _read_simplified(self) -> list[str | None]:
        if self._simplified_path is None or not self._simplified_path.exists():
            return [None] * self.n_constraints
        return json.loads(self._simplified_path.read_text(encoding="utf-8"))

    # ---- persistence
    def save(self, directory: str | Path) -> Path:
        """Write into `directory` atomically, leaving any other files there alone.

        The arrays and texts go to a fresh data folder (written as a temp folder, then
        renamed); `manifest.json`, which names that folder, is replaced last with
        `os.replace`, so a reader sees the old database or the new one, never a mix. The
        previous data folder is removed afterwards.
        """
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        previous = previous_data_dir(target)
        token = uuid.uuid4().hex[:8]
        tmp, data = target / f".tmp-db-{token}", target / f"{DATA_PREFIX}{self.fingerprint[:12]}-{token}"
        tmp.mkdir()
        try:
            for name in ARRAYS:
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(self._a[name]), allow_pickle=False)
            write_json(tmp / "task_types.json", self._types)
            write_json(tmp / "constraints.json", self._cons)
            write_json(tmp / "simplified.json", self._simplified if self._simplified is not None
                        else self._read_simplified())
            os.replace(tmp, data)
            manifest = {**self.meta, "data": data.name, "counts": {
                "task_types": self.n_task_types, "clusters": self.n_clusters, "constraints": self.n_constraints}}
            write_json(tmp.with_suffix(".json"), manifest)
            os.replace(tmp.with_suffix(".json"), target / MANIFEST)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.with_suffix(".json").unlink(missing_ok=True)
            if data.exists() and previous_data_dir(target) != data:
                shutil.rmtree(data, ignore_errors=True)
            raise
        if previous is not None and previous != data:
            shutil.rmtree(previous, ignore_errors=True)
        return target

    @classmethod
    def load(cls, directory: str | Path, expect_embedder: str | None = None) -> "ConstraintDB":
        """Load a saved database; checks format version, files, shapes and the embedder name."""
        started = time.perf_counter()
        path = Path(directory)
        meta = read_manifest(path)
        if meta.get("format_version") != FORMAT_VERSION:
            raise DatabaseError(f"{path}: constraint database format {meta.get('format_version')!r}, this ontask "
                                f"reads format {FORMAT_VERSION}; rebuild it with `ontask db build`")
        if expect_embedder is not None and meta.get("embedder") != expect_embedder:
            raise DatabaseError(f"{path}: built with embedder '{meta.get('embedder')}' but '{expect_embedder}' is in "
                                "use; their vectors live in different embedding spaces. Use the same embedder or "
                                "rebuild the database with this one")
        data = data_dir(path, meta)
        try:
            arrays = {name: np.load(data / f"{name}.npy", allow_pickle=False,
                                    mmap_mode="r" if name.endswith("_vecs") else None) for name in ARRAYS}
            types = json.loads((data / "task_types.json").read_text(encoding="utf-8"))
            cons = json.loads((data / "constraints.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatabaseError(f"{path}: constraint database is incomplete or corrupt ({exc})") from None
        check_shapes(path, arrays, types, cons, meta)
        db = cls(arrays, types, cons, {k: v for k, v in meta.items() if k not in ("data", "counts")},
                 simplified_path=data / "simplified.json")
        db.load_seconds = round(time.perf_counter() - started, 4)
        return db


def _query_vec(vec: np.ndarray, dim: int) -> np.ndarray:
    v = np.asarray(vec, dtype=np.float32).reshape(-1)
    if v.shape[0] != dim:
        raise ValueError(f"query vector has {v.shape[0]} dimensions, the database {dim}")
    norm = float(np.linalg.norm(v))
    return np.ascontiguousarray(v / norm if norm > 0 else v)

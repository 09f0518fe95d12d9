"""The constraint database (TCIA step 2): real constraints, grouped by task-type cluster.

The search (step 3) needs, for a seed's task type T, the constraints people actually use
for that kind of task, and for a constraint Cj the most similar of those constraints.
So the database keeps:

- every distinct task type (by normalised text) with its embedding; near-identical types
  are merged by DBSCAN (cosine distance <= eps) into clusters, each with a centroid so
  the search can retrieve "the entry whose task type is most similar to T";
- every distinct constraint (by normalised text) with its embedding, majority category
  and an optional `simplified_query`; per cluster, the union of its member records'
  constraints with counts (near-duplicates within a cluster, cosine >= near_duplicate,
  folded into the most frequent one so Add does not draw the same requirement twice);
- a per-cluster faiss `IndexFlatIP` over normalised vectors (exact cosine), built lazily
  from the stored arrays on first use, so loading is a handful of `np.load` calls.

It is built once (embedding dominates the cost; everything else is vectorised or linear)
and saved as .npy arrays plus JSON in a data folder named by `manifest.json`; the manifest
is replaced last, so saving is atomic and leaves other files in the folder (the CLI keeps
decomposed.jsonl there) alone. `load` checks the
format version and, when asked, the embedder name: vectors from another model live in a
different space and would silently retrieve nonsense.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from .state import CATEGORIES, Constraint, normalise_category, normalise_text

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATA_PREFIX = "constraint-db-"
_ARRAYS = (
    "type_vecs", "type_cluster", "type_records", "centroids", "cluster_rep",
    "constraint_vecs", "constraint_category", "constraint_records",
    "cluster_indptr", "cluster_constraints", "cluster_counts",
)

Progress = Callable[[str, int, int], None]

# Corpora repeat the same texts and category spellings many times: memoise the normalisers.
_norm_text = functools.lru_cache(maxsize=1 << 18)(normalise_text)
_norm_category = functools.lru_cache(maxsize=1 << 12)(normalise_category)


class EmbedderLike(Protocol):
    """What the builder needs from `ontask.embed.Embedder`: a name and normalised rows."""

    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class RecordError(ValueError):
    """A decomposed record that cannot go into the database; names the record and field."""

    def __init__(self, index: int, field: str, reason: str) -> None:
        self.index, self.field, self.reason = index, field, reason
        super().__init__(f"record {index}: field '{field}': {reason}")


class DatabaseError(ValueError):
    """A saved database that cannot be used (missing, corrupt, other version or embedder)."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class DBRecord:
    """One decomposed instruction as the database sees it: T, Q and C (with simplified queries)."""

    task_type: str
    base_query: str
    constraints: tuple[Constraint, ...]
    simplified: tuple[str | None, ...]  # parallel to constraints

    @staticmethod
    def parse(raw: Mapping[str, Any] | "DBRecord", index: int) -> "DBRecord":
        """Validate one record; raises RecordError naming `index` and the offending field."""
        if isinstance(raw, DBRecord):
            return raw
        if not isinstance(raw, Mapping):
            raise RecordError(index, "<record>", f"expected an object, got {type(raw).__name__}")
        task_type = _required_text(raw, "task_type", index)
        base_query = raw.get("base_query", "")
        if base_query is None:
            base_query = ""
        if not isinstance(base_query, str):
            raise RecordError(index, "base_query", f"expected a string, got {type(base_query).__name__}")
        items = raw.get("constraints")
        if items is None:
            raise RecordError(index, "constraints", "missing (use [] for an instruction without constraints)")
        if not isinstance(items, (list, tuple)):
            raise RecordError(index, "constraints", f"expected a list, got {type(items).__name__}")
        parsed = [_parse_constraint(item, index, j) for j, item in enumerate(items)]
        return DBRecord(task_type, base_query.strip(), tuple(c for c, _ in parsed), tuple(s for _, s in parsed))


def _required_text(raw: Mapping[str, Any], field: str, index: int, where: str | None = None) -> str:
    name = where or field
    if field not in raw or raw[field] is None:
        raise RecordError(index, name, "missing")
    value = raw[field]
    if not isinstance(value, str):
        raise RecordError(index, name, f"expected a string, got {type(value).__name__}")
    if not _norm_text(value):
        raise RecordError(index, name, "empty")
    return value.strip()


def _parse_constraint(item: Any, index: int, j: int) -> tuple[Constraint, str | None]:
    where = f"constraints[{j}]"
    if isinstance(item, Constraint):
        return item, None
    if not isinstance(item, Mapping):
        raise RecordError(index, where, f"expected an object with 'text' and 'category', got {type(item).__name__}")
    text = _required_text(item, "text", index, f"{where}.text")
    raw_cat = item.get("category")
    if not isinstance(raw_cat, str):
        raise RecordError(index, f"{where}.category", "missing" if raw_cat is None else "expected a string")
    try:
        category = _norm_category(raw_cat)
    except ValueError as exc:
        raise RecordError(index, f"{where}.category", str(exc)) from None
    simplified = item.get("simplified_query")
    if simplified is not None and not isinstance(simplified, str):
        raise RecordError(index, f"{where}.simplified_query", "expected a string or null")
    return Constraint(text, category), (simplified.strip() or None) if simplified else None


def parse_records(records: Iterable[Mapping[str, Any] | DBRecord]) -> list[DBRecord]:
    """Validate every record (the first bad one raises RecordError)."""
    return [DBRecord.parse(r, i) for i, r in enumerate(records)]


# --------------------------------------------------------------------------- tally


@dataclass
class _Tally:
    """Distinct task types / constraints and their co-occurrence, gathered in one pass."""

    type_ids: dict[str, int]
    type_texts: list[str]
    type_records: list[int]
    con_ids: dict[str, int]
    con_texts: list[str]
    con_records: list[int]
    con_cats: list[list[int]]
    simplified: list[str | None]
    pairs: dict[tuple[int, int], int]
    n_records: int


def _tally(records: Iterable[Mapping[str, Any] | DBRecord]) -> _Tally:
    t = _Tally({}, [], [], {}, [], [], [], [], {}, 0)
    cat_index = {c: i for i, c in enumerate(CATEGORIES)}
    for index, raw in enumerate(records):
        rec = DBRecord.parse(raw, index)
        t.n_records += 1
        tid = _intern(t.type_ids, t.type_texts, _norm_text(rec.task_type), rec.task_type)
        if tid == len(t.type_records):
            t.type_records.append(0)
        t.type_records[tid] += 1
        seen: set[int] = set()
        for con, simp in zip(rec.constraints, rec.simplified):
            cid = _intern(t.con_ids, t.con_texts, _norm_text(con.text), con.text)
            if cid == len(t.con_records):
                t.con_records.append(0)
                t.con_cats.append([0] * len(CATEGORIES))
                t.simplified.append(None)
            if cid in seen:
                continue
            seen.add(cid)
            t.con_records[cid] += 1
            t.con_cats[cid][cat_index.get(con.category, 0)] += 1
            if simp and t.simplified[cid] is None:
                t.simplified[cid] = simp
            t.pairs[(tid, cid)] = t.pairs.get((tid, cid), 0) + 1
    return t


def _intern(ids: dict[str, int], texts: list[str], key: str, text: str) -> int:
    found = ids.get(key)
    if found is None:
        found = ids[key] = len(texts)
        texts.append(text)
    return found


# --------------------------------------------------------------------------- build


def _embed_all(embedder: EmbedderLike, texts: Sequence[str], batch: int, what: str,
               progress: Progress | None) -> np.ndarray:
    """Embed in batches (so progress can be reported and memory stays bounded)."""
    parts: list[np.ndarray] = []
    for start in range(0, len(texts), batch):
        parts.append(np.asarray(embedder.embed(list(texts[start:start + batch])), dtype=np.float32))
        if progress:
            progress(what, min(start + batch, len(texts)), len(texts))
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return _normalise(np.concatenate(parts))


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def cluster_task_types(vecs: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN (cosine distance) labels, every type in a cluster: noise becomes a singleton.

    The eps-neighbourhood graph is found with faiss (exact inner products in BLAS blocks,
    still O(n^2 d)) and handed to scikit-learn's DBSCAN as a sparse precomputed distance
    matrix: the same labels as `DBSCAN(metric="cosine")` (checked on 8k types), about 4x
    faster, and only the eps-graph is held in memory.
    """
    import faiss
    from scipy import sparse
    from sklearn.cluster import DBSCAN

    n = len(vecs)
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    lims, sims, ids = index.range_search(vecs, float(1.0 - eps - 1e-6))
    dist = np.clip(1.0 - sims.astype(np.float64), 0.0, 2.0)
    graph = sparse.csr_matrix((dist, ids.astype(np.int64), lims.astype(np.int64)), shape=(n, n))
    graph.sort_indices()
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(graph).labels_
    return _relabel(labels)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Clusters numbered by first member (stable); each noise point its own cluster."""
    out = np.empty(len(labels), dtype=np.int32)
    mapping: dict[int, int] = {}
    for i, lab in enumerate(labels.tolist()):
        key = lab if lab >= 0 else -1 - i
        if key not in mapping:
            mapping[key] = len(mapping)
        out[i] = mapping[key]
    return out


def _centroids(vecs: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    sums = np.zeros((n_clusters, vecs.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, vecs)
    return _normalise(sums.astype(np.float32))


def _representatives(labels: np.ndarray, records: np.ndarray, n_clusters: int) -> np.ndarray:
    """Per cluster the member type with most records (ties: first seen)."""
    order = np.lexsort((np.arange(len(labels)), -records, labels))
    first = np.ones(len(order), dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    rep = np.empty(n_clusters, dtype=np.int32)
    rep[labels[order][first]] = order[first]
    return rep


def _cluster_constraints(pairs: dict[tuple[int, int], int], labels: np.ndarray, n_clusters: int,
                         n_constraints: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr, constraint ids, record counts) per cluster, ids ascending (first seen)."""
    if not pairs:
        return np.zeros(n_clusters + 1, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32)
    arr = np.fromiter((v for key in pairs for v in key), dtype=np.int64, count=2 * len(pairs)).reshape(-1, 2)
    counts = np.fromiter(pairs.values(), dtype=np.int64, count=len(pairs))
    combined = labels[arr[:, 0]].astype(np.int64) * max(n_constraints, 1) + arr[:, 1]
    uniq, inverse = np.unique(combined, return_inverse=True)
    summed = np.bincount(inverse, weights=counts).astype(np.int32)
    clusters, cons = uniq // max(n_constraints, 1), (uniq % max(n_constraints, 1)).astype(np.int32)
    indptr = np.zeros(n_clusters + 1, dtype=np.int64)
    np.cumsum(np.bincount(clusters, minlength=n_clusters), out=indptr[1:])
    return indptr, cons, summed


def fold_near_duplicates(indptr: np.ndarray, cons: np.ndarray, counts: np.ndarray, vecs: np.ndarray,
                         threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Within each cluster, fold constraints with cosine >= threshold into the most frequent.

    Greedy in order of (count desc, id asc): a kept constraint absorbs every not yet
    absorbed neighbour's count. Returns the new CSR and how many entries were folded.
    """
    keep = np.ones(len(cons), dtype=bool)
    counts = counts.copy()
    for c in range(len(indptr) - 1):
        lo, hi = int(indptr[c]), int(indptr[c + 1])
        if hi - lo < 2:
            continue
        neighbours = _near_pairs(np.ascontiguousarray(vecs[cons[lo:hi]], dtype=np.float32), threshold)
        if neighbours:
            absorbed = _absorb(neighbours, counts[lo:hi])
            keep[lo:hi] = ~absorbed
    folded = int((~keep).sum())
    if not folded:
        return indptr, cons, counts, 0
    cluster_of = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))[keep]
    new_indptr = np.zeros_like(indptr)
    np.cumsum(np.bincount(cluster_of, minlength=len(indptr) - 1), out=new_indptr[1:])
    return new_indptr, cons[keep], counts[keep], folded


def _near_pairs(local: np.ndarray, threshold: float, dense_limit: int = 2048) -> dict[int, list[int]]:
    """Neighbour lists (i -> [j...], i != j) of vectors with cosine >= threshold.

    Small groups use one dense product; large ones faiss range search (bounded memory).
    """
    n = len(local)
    if n <= dense_limit:
        hits = np.argwhere(local @ local.T >= threshold)
    else:
        import faiss

        index = faiss.IndexFlatIP(local.shape[1])
        index.add(local)
        lims, sims, ids = index.range_search(local, float(threshold - 1e-6))
        rows = np.repeat(np.arange(n), np.diff(lims.astype(np.int64)))
        hits = np.stack([rows, ids], axis=1)[sims >= threshold]
    out: dict[int, list[int]] = {}
    for i, j in hits[hits[:, 0] != hits[:, 1]].tolist():
        out.setdefault(i, []).append(j)
    return out


def _absorb(neighbours: dict[int, list[int]], counts: np.ndarray) -> np.ndarray:
    """Greedy folding on one cluster; updates `counts` in place, returns the absorbed mask."""
    absorbed = np.zeros(len(counts), dtype=bool)
    for i in np.lexsort((np.arange(len(counts)), -counts)).tolist():
        if absorbed[i] or i not in neighbours:
            continue
        for j in neighbours[i]:
            if not absorbed[j]:
                absorbed[j] = True
                counts[i] += counts[j]
    return absorbed


def build_database(
    records: Iterable[Mapping[str, Any] | DBRecord],
    embedder: EmbedderLike,
    *,
    eps: float = 0.15,
    min_samples: int = 1,
    near_duplicate: float | None = 0.95,
    batch: int = 4096,
    progress: Progress | None = None,
) -> "ConstraintDB":
    """Build the database from decomposed records (see DBRecord.parse for the format).

    `eps`: DBSCAN cosine-distance radius for merging task types; `min_samples`: DBSCAN
    core size (types that end up noise become singleton clusters, so every type is
    retrievable); `near_duplicate`: fold constraints this similar within a cluster
    (None: keep every distinct text).
    """
    if not 0 < eps < 2:
        raise ValueError(f"eps must be in (0, 2), got {eps}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    if near_duplicate is not None and not 0 < near_duplicate <= 1:
        raise ValueError(f"near_duplicate must be in (0, 1], got {near_duplicate}")
    started = time.perf_counter()
    t = _tally(records)
    if not t.type_texts:
        raise ValueError("no records: the constraint database needs at least one decomposed instruction")
    type_vecs = _embed_all(embedder, t.type_texts, batch, "task types", progress)
    dim = type_vecs.shape[1]
    con_vecs = (_embed_all(embedder, t.con_texts, batch, "constraints", progress)
                if t.con_texts else np.zeros((0, dim), dtype=np.float32))
    if con_vecs.shape[1] != dim:
        raise ValueError(f"embedder returned {con_vecs.shape[1]}-d constraint vectors but {dim}-d task types")
    labels = cluster_task_types(type_vecs, eps, min_samples)
    n_clusters = int(labels.max()) + 1
    type_records = np.asarray(t.type_records, dtype=np.int32)
    indptr, cons, counts = _cluster_constraints(t.pairs, labels, n_clusters, len(t.con_texts))
    folded = 0
    if near_duplicate is not None and near_duplicate < 1:
        indptr, cons, counts, folded = fold_near_duplicates(indptr, cons, counts, con_vecs, near_duplicate)
    arrays = {
        "type_vecs": type_vecs, "type_cluster": labels, "type_records": type_records,
        "centroids": _centroids(type_vecs, labels, n_clusters),
        "cluster_rep": _representatives(labels, type_records, n_clusters),
        "constraint_vecs": con_vecs,
        "constraint_category": (np.asarray(t.con_cats, dtype=np.int32).reshape(-1, len(CATEGORIES))
                                .argmax(axis=1).astype(np.int8)),
        "constraint_records": np.asarray(t.con_records, dtype=np.int32),
        "cluster_indptr": indptr, "cluster_constraints": cons, "cluster_counts": counts,
    }
    meta = {
        "format_version": FORMAT_VERSION, "embedder": embedder.name, "dim": int(dim),
        "records": t.n_records, "eps": float(eps), "min_samples": int(min_samples),
        "near_duplicate": near_duplicate, "folded_near_duplicates": folded,
    }
    meta["fingerprint"] = _fingerprint(meta, arrays, t.type_texts, t.con_texts)
    meta["build_seconds"] = round(time.perf_counter() - started, 3)
    return ConstraintDB(arrays, t.type_texts, t.con_texts, meta, simplified=t.simplified)


def _fingerprint(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], types: Sequence[str],
                 cons: Sequence[str]) -> str:
    """Content identity: settings, embedder, texts and cluster structure (not float vectors,
    which may differ in the last bits between machines for the same model)."""
    h = hashlib.sha256()
    settings = {k: meta[k] for k in ("format_version", "embedder", "eps", "min_samples", "near_duplicate")}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for texts in (types, cons):
        h.update(json.dumps(list(texts), ensure_ascii=False).encode())
    for name in ("type_cluster", "type_records", "constraint_category", "constraint_records",
                 "cluster_indptr", "cluster_constraints", "cluster_counts"):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).astype(np.int64).tobytes())
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------- database


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
        previous = _previous_data_dir(target)
        token = uuid.uuid4().hex[:8]
        tmp, data = target / f".tmp-db-{token}", target / f"{DATA_PREFIX}{self.fingerprint[:12]}-{token}"
        tmp.mkdir()
        try:
            for name in _ARRAYS:
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(self._a[name]), allow_pickle=False)
            _write_json(tmp / "task_types.json", self._types)
            _write_json(tmp / "constraints.json", self._cons)
            _write_json(tmp / "simplified.json", self._simplified if self._simplified is not None
                        else self._read_simplified())
            os.replace(tmp, data)
            manifest = {**self.meta, "data": data.name, "counts": {
                "task_types": self.n_task_types, "clusters": self.n_clusters, "constraints": self.n_constraints}}
            _write_json(tmp.with_suffix(".json"), manifest)
            os.replace(tmp.with_suffix(".json"), target / MANIFEST)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.with_suffix(".json").unlink(missing_ok=True)
            if data.exists() and _previous_data_dir(target) != data:
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
        meta = _read_manifest(path)
        if meta.get("format_version") != FORMAT_VERSION:
            raise DatabaseError(f"{path}: constraint database format {meta.get('format_version')!r}, this ontask "
                                f"reads format {FORMAT_VERSION}; rebuild it with `ontask db build`")
        if expect_embedder is not None and meta.get("embedder") != expect_embedder:
            raise DatabaseError(f"{path}: built with embedder '{meta.get('embedder')}' but '{expect_embedder}' is in "
                                "use; their vectors live in different embedding spaces. Use the same embedder or "
                                "rebuild the database with this one")
        data = _data_dir(path, meta)
        try:
            arrays = {name: np.load(data / f"{name}.npy", allow_pickle=False,
                                    mmap_mode="r" if name.endswith("_vecs") else None) for name in _ARRAYS}
            types = json.loads((data / "task_types.json").read_text(encoding="utf-8"))
            cons = json.loads((data / "constraints.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatabaseError(f"{path}: constraint database is incomplete or corrupt ({exc})") from None
        _check_shapes(path, arrays, types, cons, meta)
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


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())


def _valid_data_name(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(DATA_PREFIX) and Path(name).name == name and "\\" not in name


def _data_dir(path: Path, meta: Mapping[str, Any]) -> Path:
    if not _valid_data_name(meta.get("data")):
        raise DatabaseError(f"{path}: constraint database manifest names no valid data folder")
    return path / meta["data"]


def _previous_data_dir(target: Path) -> Path | None:
    """The data folder the current manifest names, if there is a readable one."""
    try:
        name = json.loads((target / MANIFEST).read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return target / name if _valid_data_name(name) else None


def _read_manifest(path: Path) -> dict[str, Any]:
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


def _check_shapes(path: Path, a: Mapping[str, np.ndarray], types: list, cons: list, meta: Mapping[str, Any]) -> None:
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

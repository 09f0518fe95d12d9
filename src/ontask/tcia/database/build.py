"""Building the constraint database from records: tally, embed, cluster, fold, fingerprint."""

from __future__ import annotations


import hashlib
import json
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..state import CATEGORIES
from .cluster import centroids, cluster_constraints, embed_all, representatives, cluster_task_types, fold_near_duplicates
from .common import FORMAT_VERSION, Progress
from .db import ConstraintDB
from .records import DBRecord, EmbedderLike, tally


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
    t = tally(records)
    if not t.type_texts:
        raise ValueError("no records: the constraint database needs at least one decomposed instruction")
    type_vecs = embed_all(embedder, t.type_texts, batch, "task types", progress)
    dim = type_vecs.shape[1]
    con_vecs = (embed_all(embedder, t.con_texts, batch, "constraints", progress)
                if t.con_texts else np.zeros((0, dim), dtype=np.float32))
    if con_vecs.shape[1] != dim:
        raise ValueError(f"embedder returned {con_vecs.shape[1]}-d constraint vectors but {dim}-d task types")
    labels = cluster_task_types(type_vecs, eps, min_samples)
    n_clusters = int(labels.max()) + 1
    type_records = np.asarray(t.type_records, dtype=np.int32)
    indptr, cons, counts = cluster_constraints(t.pairs, labels, n_clusters, len(t.con_texts))
    folded = 0
    if near_duplicate is not None and near_duplicate < 1:
        indptr, cons, counts, folded = fold_near_duplicates(indptr, cons, counts, con_vecs, near_duplicate)
    arrays = {
        "type_vecs": type_vecs, "type_cluster": labels, "type_records": type_records,
        "centroids": centroids(type_vecs, labels, n_clusters),
        "cluster_rep": representatives(labels, type_records, n_clusters),
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

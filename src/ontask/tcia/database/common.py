"""Constants and memoised normalisers shared by the database modules."""

from __future__ import annotations


import functools
from typing import Callable


from ..state import normalise_category, normalise_text


FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATA_PREFIX = "constraint-db-"
ARRAYS = (
    "type_vecs", "type_cluster", "type_records", "centroids", "cluster_rep",
    "constraint_vecs", "constraint_category", "constraint_records",
    "cluster_indptr", "cluster_constraints", "cluster_counts",
)

Progress = Callable[[str, int, int], None]

# Corpora repeat the same texts and category spellings many times: memoise the normalisers.
norm_text = functools.lru_cache(maxsize=1 << 18)(normalise_text)
norm_category = functools.lru_cache(maxsize=1 << 12)(normalise_category)

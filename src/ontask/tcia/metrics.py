"""Diversity and on-task measures of generated instructions (tcia.md, "How the paper measured it")."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np


def diversity(vectors: np.ndarray) -> float | None:
    """1 - mean pairwise cosine over all distinct pairs (rows L2-normalised); None below 2 rows."""
    n = len(vectors)
    if n < 2:
        return None
    total = vectors.sum(axis=0, dtype=np.float64)
    pair_sum = (float(total @ total) - float(np.einsum("ij,ij->", vectors, vectors, dtype=np.float64))) / 2
    return 1.0 - pair_sum / (n * (n - 1) / 2)


def per_hop(hops: Iterable[int], vectors: np.ndarray) -> dict[str, float | None]:
    """Diversity of each hop's instructions and of all of them together."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, h in enumerate(hops):
        groups[h].append(i)
    out: dict[str, float | None] = {str(h): diversity(vectors[idx]) for h, idx in sorted(groups.items())}
    out["all"] = diversity(vectors)
    return out


def distance_sample(vectors: np.ndarray, max_pairs: int = 2000, seed: int = 0) -> dict[str, object] | None:
    """Pairwise distances 1 - cosine of a group (rows L2-normalised), for density plots.

    Every distinct pair when there are at most `max_pairs`, else `max_pairs` distinct pairs
    drawn with a seeded generator (the same run gives the same sample). The paper draws
    these distributions per hop; a mean alone hides a bimodal spread. None below 2 rows.
    """
    n = len(vectors)
    if n < 2:
        return None
    pairs = n * (n - 1) // 2
    if pairs <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        i, j = triu_pair(np.random.default_rng(seed).choice(pairs, size=max_pairs, replace=False), n)
    d = 1.0 - np.einsum("ij,ij->i", vectors[i], vectors[j], dtype=np.float64)
    return {"pairs": pairs, "sampled": int(len(d)), "mean_sampled": float(d.mean()),
            "sample": [round(float(x), 4) for x in d]}


def triu_pair(flat: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the strict upper triangle's row-major index `flat` (as np.triu_indices)."""
    flat = np.asarray(flat, dtype=np.int64)
    i = (n - 2 - np.floor(np.sqrt(-8 * flat + 4 * n * (n - 1) - 7) / 2 - 0.5)).astype(np.int64)
    j = flat + i + 1 - n * (n - 1) // 2 + (n - i) * ((n - i) - 1) // 2
    return i, j


def distances_per_hop(hops: Iterable[int], vectors: np.ndarray, max_pairs: int = 2000) -> dict[str, object]:
    """`distance_sample` for each hop's instructions (the paper's density curves)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, h in enumerate(hops):
        groups[h].append(i)
    return {str(h): distance_sample(vectors[idx], max_pairs, seed=h) for h, idx in sorted(groups.items())}


def ratio_per_hop(hops: Iterable[int], flags: Iterable[bool | None]) -> dict[str, dict[str, float | int]]:
    """Share of True among judged items per hop (None = not judged, left out and counted)."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for h, f in zip(hops, flags):
        for key in (str(h), "all"):
            a = acc[key]
            if f is None:
                a[2] += 1
            else:
                a[0] += int(f)
                a[1] += 1
    return {k: {"ratio": (a[0] / a[1]) if a[1] else None, "judged": a[1], "unjudged": a[2]}
            for k, a in sorted(acc.items(), key=lambda kv: (kv[0] == "all", kv[0]))}

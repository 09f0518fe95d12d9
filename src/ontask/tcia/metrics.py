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

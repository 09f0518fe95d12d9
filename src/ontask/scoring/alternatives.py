"""Alternative instructions for TSS: `random` (other rows') and `hard` (nearest by embedding).

Both work on the pool of distinct instruction texts of the dataset, so a repeated
instruction (Self-Instruct instances, augmented rows) is never its own competitor.
Choices are deterministic: `random` draws from a generator seeded by (seed, row number),
`hard` ranks by cosine with ties broken by pool order.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


class InstructionPool:
    """Distinct instruction texts in order of first appearance."""

    def __init__(self, instructions: Iterable[str] = ()) -> None:
        self.texts: list[str] = []
        self.index: dict[str, int] = {}
        for text in instructions:
            self.add(text)

    def add(self, text: str) -> int:
        idx = self.index.get(text)
        if idx is None:
            idx = self.index[text] = len(self.texts)
            self.texts.append(text)
        return idx

    def __len__(self) -> int:
        return len(self.texts)


def random_alternatives(pool_size: int, true_idx: int, k: int, seed: int, row: int) -> list[int]:
    """k distinct pool indices other than `true_idx`, reproducible per (seed, row)."""
    if pool_size - 1 < k:
        raise ValueError(f"random alternatives need at least k+1={k + 1} distinct instructions, found {pool_size}")
    rng = np.random.default_rng([seed, row])
    picks = rng.choice(pool_size - 1, size=k, replace=False)
    return [int(p) + (p >= true_idx) for p in picks]


def hard_neighbours(emb: np.ndarray, k: int, near_duplicate: float, block: int = 256) -> list[list[int]]:
    """For each row of `emb` (normalised), the k most similar other rows below the threshold.

    Works in blocks so memory is block x pool, not pool x pool. Rows at or above
    `near_duplicate` cosine are paraphrases of the true instruction and are skipped.
    """
    n = emb.shape[0]
    out: list[list[int]] = []
    take = min(k, n - 1)
    if take <= 0:
        return [[] for _ in range(n)]
    for a in range(0, n, block):
        sims = emb[a : a + block] @ emb.T  # [block, n]
        rows = np.arange(sims.shape[0])
        sims[rows, a + rows] = -np.inf  # never yourself
        sims[sims >= near_duplicate] = -np.inf
        part = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        for r in rows:
            cand = sorted(part[r], key=lambda c: (-sims[r, c], c))
            out.append([int(c) for c in cand if np.isfinite(sims[r, c])])
    return out

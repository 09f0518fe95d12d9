"""Synthetic scored rows at any size, for the report's size and speed checks.

Scores are drawn from distributions like real ones (TSS near 0.1, IFD near 0.8, with
perplexity tied to IFD) and texts from a small vocabulary, seeded, so a file of a given
size is the same bytes every time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = np.array("reply customer order refund delivery apologise summary bullet concise polite tracking "
                 "replace damaged invoice address weekend courier warehouse".split())


def write_scored_rows(path: Path, n: int, seed: int = 0) -> Path:
    """`n` rows with instruction, input, response, tss, tss_pp, ifd, ppl, tokens, tss_top_alt."""
    rng = np.random.default_rng(seed)
    tss = rng.normal(0.1, 0.05, n)
    ifd = np.clip(rng.normal(0.8, 0.1, n), 0.2, 1.4)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            text = " ".join(rng.choice(WORDS, 40))
            f.write(json.dumps({"instruction": f"row {i}: {text[:120]}", "input": text, "response": text * 3,
                                "tss": tss[i], "tss_pp": tss[i] * 10 - 1, "ifd": ifd[i], "ppl": float(np.exp(ifd[i] * 2)),
                                "tokens": int(100 + i % 400), "tss_top_alt": text[:100]}) + "\n")
    return path

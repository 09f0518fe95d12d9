"""Try a slice before the whole file: the first N items, or N drawn at random (seeded).

One rule for every command that reads rows (score, decompose, augment's seeds), applied to
a stream of chunks so a large file is never held in memory: `limit` stops reading early;
`sample` counts the items in one read and yields the drawn ones, in file order, in a
second, so a sample looks like the file and the same seed always draws the same rows.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


def sliced(chunks: Callable[[], Iterator[list[T]]], limit: int | None = None, sample: int | None = None,
           seed: int = 0) -> Iterator[list[T]]:
    """`chunks()` (called once, or twice for a sample) cut to the first `limit` items or to
    `sample` items drawn without replacement; chunks left empty are not yielded."""
    if limit is not None and sample is not None:
        raise ValueError("give a limit or a sample, not both")
    if sample is not None:
        total = sum(len(chunk) for chunk in chunks())
        keep = set(random.Random(seed).sample(range(total), min(sample, total)))
        seen = 0
        for chunk in chunks():
            picked = [item for i, item in enumerate(chunk, start=seen) if i in keep]
            seen += len(chunk)
            if picked:
                yield picked
        return
    seen = 0
    for chunk in chunks():
        if limit is not None:
            chunk = chunk[: max(0, limit - seen)]
            seen += len(chunk)
        if chunk or limit is None:
            yield chunk
        if limit is not None and seen >= limit:
            return

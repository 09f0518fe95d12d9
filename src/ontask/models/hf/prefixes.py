"""Which prompt prefixes a scoring call computes once: a prefix tree over its passes.

Why: the passes of a TSS run share more than the chat header. A row is scored under its
own instruction and under k alternatives, and the alternatives are other rows'
instructions, so "header + instruction j" opens row j's own pass and, on average, k
passes of other rows. On 100 Self-Instruct rows with k = 4, 103k tokens hold 78k
distinct prefixes. The fused scorer sorts passes by their tokens, so passes that share a
prefix sit in one batch, and runs each batch's shared prefixes once: the same arithmetic
on fewer tokens (every token still attends to its whole context).

Pure functions over token ids: the scorer decides what to run, `tree` what is shared.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tree:
    """Shared prefixes of a set of token sequences.

    `nodes`: the distinct shared prefixes, shorter first, so a node's parent precedes it;
    `parent`: per node, the longest other node it extends (-1: none);
    `node_of`: per sequence, the longest node it starts with (-1: none)."""

    nodes: list[tuple[int, ...]]
    parent: list[int]
    node_of: list[int]

    def start(self, node: int) -> int:
        """Tokens a sequence starting with `node` skips (its length; 0 for -1)."""
        return len(self.nodes[node]) if node >= 0 else 0

    def tokens_run(self, seqs: list[list[int]]) -> int:
        """Tokens a packed forward of `seqs` (the sequences this tree was built from) runs:
        each node's own part once, each sequence from the end of its node."""
        return sum(len(t) - self.start(p) for t, p in zip(self.nodes, self.parent)) + sum(
            len(s) - self.start(j) for s, j in zip(seqs, self.node_of))


def common_length(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def tree(seqs: list[list[int]], limits: list[int], minimum: int) -> Tree:
    """The prefixes worth computing once: each sequence's longest prefix shared with another
    (at most `limits[i]` tokens of it, and at least `minimum`), kept only where two or more
    sequences or longer shared prefixes continue it (one user gains nothing).

    In sorted order a sequence's longest common prefix with any other is the one with a
    neighbour, so one sort and a pass over neighbours finds them all."""
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    longest = [0] * len(seqs)
    for a, b in zip(order, order[1:]):
        n = common_length(seqs[a], seqs[b])
        longest[a], longest[b] = max(longest[a], n), max(longest[b], n)
    wanted = {i: min(longest[i], limits[i]) for i in range(len(seqs))}
    nodes = {tuple(seqs[i][:n]) for i, n in wanted.items() if n >= minimum}
    while True:  # drop nodes fewer than two users continue, until none is left to drop
        ordered = sorted(nodes, key=lambda t: (len(t), t))
        parent, node_of = _links(ordered, seqs, wanted)
        users = [0] * len(ordered)
        for j in [*node_of, *parent]:
            if j >= 0:
                users[j] += 1
        lonely = {ordered[j] for j, u in enumerate(users) if u < 2}
        if not lonely:
            return Tree(ordered, parent, node_of)
        nodes -= lonely


def _links(nodes: list[tuple[int, ...]], seqs: list[list[int]], wanted: dict[int, int]) -> tuple[list[int], list[int]]:
    """Per node its longest proper-prefix node, per sequence its longest node (within what
    it may skip); -1 where none."""
    index = {t: j for j, t in enumerate(nodes)}
    lengths = sorted({len(t) for t in nodes}, reverse=True)

    def longest(tokens, upto: int) -> int:
        for n in lengths:
            if n <= upto:
                j = index.get(tuple(tokens[:n]))
                if j is not None:
                    return j
        return -1

    parent = [longest(t, len(t) - 1) for t in nodes]
    node_of = [longest(s, wanted[i]) for i, s in enumerate(seqs)]
    return parent, node_of

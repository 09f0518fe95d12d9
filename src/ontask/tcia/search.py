"""Breadth-first search over constraint edits (TCIA step 3).

From a seed (T, Q, C) the search walks the discrete instruction space by small explicit
edits to C only -- Remove, Add, Replace -- drawing new constraints from the database
cluster whose task type is most similar to T, so every produced instruction stays on the
seed's task. It is pure: given the database, an `embed(texts)` callable and a seed, the
result is fully determined by `SearchConfig.seed` (one `random.Random` stream for every
draw, a second one, derived from the same seed, for the final sample).

Counting follows tcia.md, not the paper's pseudo-code: K bounds the number of *unique*
states produced (the seed itself is seen but not counted), not the queue size.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .database import ClusterInfo
from .state import Constraint, Edit, InstructionState, Node

EmbedFn = Callable[[Sequence[str]], np.ndarray]
OPS: tuple[str, ...] = ("remove", "add", "replace")
SKIP_REASONS: tuple[str, ...] = ("duplicate_state", "empty_constraints", "already_present", "no_candidate")
Reason = Literal["duplicate_state", "empty_constraints", "already_present", "no_candidate"]


class SearchDB(Protocol):
    """The part of `ConstraintDB` the search uses (tests may pass a stand-in)."""

    def nearest_cluster_with_score(self, task_type_vec: np.ndarray) -> tuple[int, float]: ...

    def constraints(self, cluster: int) -> list[Constraint]: ...

    def similar_constraints(self, cluster: int, vec: np.ndarray, k: int) -> list[tuple[Constraint, float]]: ...

    def cluster_info(self, cluster: int) -> ClusterInfo: ...


class SearchConfig(BaseModel):
    """Settings of the search; defaults are the paper's (m=10, K=2,700, k=2,000, 3 hops)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hops: int = Field(3, ge=1, le=100, description="depth limit: edits from the seed")
    per_op: int = Field(10, ge=1, le=10_000, description="m: draws of each operation per expanded state")
    max_states: int = Field(2700, ge=1, description="K: stop once this many unique states were produced")
    samples: int = Field(2000, ge=1, description="k: states returned, sampled from the produced ones")
    seed: int = Field(0, description="seeds every random draw of the search and of the sample")
    near_duplicate: float = Field(0.95, gt=0, le=1,
                                  description="Replace skips candidates at least this cosine-similar to Cj")


@dataclass(frozen=True, slots=True)
class Retrieval:
    """The database cluster retrieved for T, and how similar its centroid is."""

    cluster: int
    similarity: float
    info: ClusterInfo

    def to_json(self) -> dict[str, Any]:
        return {"similarity": round(self.similarity, 6), **self.info.to_json()}


@dataclass
class SearchCounts:
    """Attempted edits per op and skipped edits per reason; why the search stopped."""

    attempted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    produced: int = 0
    expanded: int = 0
    stopped: Literal["queue_empty", "max_states"] = "queue_empty"

    def to_json(self) -> dict[str, Any]:
        return {"attempted": dict(self.attempted), "skipped": dict(self.skipped), "produced": self.produced,
                "expanded": self.expanded, "stopped": self.stopped}

    def items(self):  # noqa: ANN201 - dict-like view, so `dict(counts.items())` gives the JSON form
        return self.to_json().items()


@dataclass
class SearchResult:
    """Every produced node (BFS discovery order), the sample, the counts and retrievals."""

    seed: InstructionState
    nodes: list[Node]
    sampled: list[Node]
    counts: SearchCounts
    retrieved: dict[str, Retrieval]  # expanded state's hash -> what was retrieved for it
    config: SearchConfig


def node_to_json(node: Node) -> dict[str, Any]:
    """A produced node with its lineage, as the later steps and run files record it."""
    return {"state_hash": node.state_hash, "hop": node.hop, "parent": node.parent,
            "path": [e.to_json() for e in node.path], "state": node.state.to_json()}


def apply_edit(state: InstructionState, edit: Edit) -> InstructionState:
    """The state an edit leads to (T and Q unchanged)."""
    if edit.op == "remove":
        assert edit.removed is not None
        return state.without(edit.removed)
    if edit.op == "add":
        assert edit.added is not None
        return state.with_added(edit.added)
    assert edit.removed is not None and edit.added is not None
    return state.without(edit.removed).with_added(edit.added)


class _Memo:
    """Embeddings of constraint texts by normalised key; each text embedded at most once."""

    def __init__(self, embed: EmbedFn) -> None:
        self._embed, self._vecs = embed, {}  # type: ignore[var-annotated]
        self.calls = 0

    def ensure(self, constraints: Sequence[Constraint]) -> None:
        todo: dict[str, str] = {}
        for c in constraints:
            if c.key not in self._vecs and c.key not in todo:
                todo[c.key] = c.text
        if todo:
            self.calls += 1
            vecs = np.asarray(self._embed(list(todo.values())), dtype=np.float32)
            self._vecs.update(zip(todo, vecs))

    def __getitem__(self, key: str) -> np.ndarray:
        return self._vecs[key]


class _Replacer:
    """Finds, for Cj, the most similar cluster constraint that is a legal replacement.

    The ranking of the cluster's constraints against Cj does not depend on the state, so
    it is memoised per Cj; it is widened (x4) only when every ranked candidate is excluded.
    """

    def __init__(self, db: SearchDB, cluster: int, pool_size: int, memo: _Memo, near_duplicate: float) -> None:
        self.db, self.cluster, self.pool_size, self.memo = db, cluster, pool_size, memo
        self.near_duplicate = near_duplicate
        self._ranked: dict[str, list[tuple[Constraint, float]]] = {}

    def best(self, cj: Constraint, present: frozenset[str]) -> Constraint | None:
        k = min(self.pool_size, 16)
        while True:
            ranked = self._ranking(cj, k)
            for cand, sim in ranked:
                if cand.key != cj.key and sim < self.near_duplicate and cand.key not in present:
                    return cand
            if len(ranked) >= self.pool_size or k >= self.pool_size:
                return None
            k = min(self.pool_size, k * 4)

    def _ranking(self, cj: Constraint, k: int) -> list[tuple[Constraint, float]]:
        ranked = self._ranked.get(cj.key)
        if ranked is None or (len(ranked) < k and len(ranked) < self.pool_size):
            ranked = self._ranked[cj.key] = self.db.similar_constraints(self.cluster, self.memo[cj.key], k)
        return ranked


class _Search:
    """One run of the BFS; holds the RNG, the seen set and the counts."""

    def __init__(self, seed: InstructionState, db: SearchDB, embed: EmbedFn, config: SearchConfig) -> None:
        self.seed, self.config = seed, config
        self.rng = random.Random(config.seed)
        self.counts = SearchCounts()
        self.nodes: list[Node] = []
        self.seen: set[str] = {seed.state_hash}
        self.retrieved: dict[str, Retrieval] = {}
        self.memo = _Memo(embed)
        t_vec = np.asarray(embed([seed.task_type]), dtype=np.float32)[0]
        cluster, sim = db.nearest_cluster_with_score(t_vec)
        self.retrieval = Retrieval(cluster, sim, db.cluster_info(cluster))
        self.pool = db.constraints(cluster)
        self.replacer = _Replacer(db, cluster, len(self.pool), self.memo, config.near_duplicate)

    @property
    def full(self) -> bool:
        return len(self.nodes) >= self.config.max_states

    def run(self) -> None:
        queue: deque[Node] = deque([Node(self.seed, 0)])
        while queue and not self.full:
            node = queue.popleft()
            if node.hop >= self.config.hops:
                continue
            self.expand(node, queue)
        self.counts.produced = len(self.nodes)
        self.counts.stopped = "max_states" if self.full else "queue_empty"

    def expand(self, node: Node, queue: deque[Node]) -> None:
        self.counts.expanded += 1
        self.retrieved[node.state_hash] = self.retrieval
        self.memo.ensure(node.state.constraints)
        present = node.state.keys
        for op in OPS:
            for _ in range(self.config.per_op):
                if self.full:
                    return
                self.counts.attempted[op] += 1
                edit = self.draw(op, node.state, present)
                if isinstance(edit, str):
                    self.counts.skipped[edit] += 1
                    continue
                self.offer(node, edit, queue)

    def draw(self, op: str, state: InstructionState, present: frozenset[str]) -> Edit | Reason:
        """One random edit of `op` on `state`, or the reason it is skipped."""
        cs = state.constraints
        if op == "remove":
            if len(cs) < 2:
                return "empty_constraints"
            return Edit("remove", removed=cs[self.rng.randrange(len(cs))])
        if op == "add":
            if not self.pool:
                return "no_candidate"
            cand = self.pool[self.rng.randrange(len(self.pool))]
            return "already_present" if cand.key in present else Edit("add", added=cand)
        if not cs:
            return "no_candidate"
        cj = cs[self.rng.randrange(len(cs))]
        repl = self.replacer.best(cj, present)
        return "no_candidate" if repl is None else Edit("replace", removed=cj, added=repl)

    def offer(self, parent: Node, edit: Edit, queue: deque[Node]) -> None:
        state = apply_edit(parent.state, edit)
        h = state.state_hash
        if h in self.seen:
            self.counts.skipped["duplicate_state"] += 1
            return
        self.seen.add(h)
        child = Node(state, parent.hop + 1, parent.path + (edit,), parent=parent.state_hash)
        self.nodes.append(child)
        queue.append(child)


def best_replacements(state: InstructionState, db: SearchDB, embed: EmbedFn, near_duplicate: float = 0.95,
                      ) -> dict[str, Constraint | None]:
    """For each constraint of `state`, the most similar legal replacement in its task's cluster.

    The Replace edit of the search, made deterministic (the best, not a random draw):
    used to build counterfactual `variants` of an instruction for TSS.
    """
    memo = _Memo(embed)
    t_vec = np.asarray(embed([state.task_type]), dtype=np.float32)[0]
    cluster, _ = db.nearest_cluster_with_score(t_vec)
    pool = db.constraints(cluster)
    replacer = _Replacer(db, cluster, len(pool), memo, near_duplicate)
    memo.ensure(state.constraints)
    return {c.key: replacer.best(c, state.keys) for c in state.constraints}


def sample_nodes(nodes: Sequence[Node], k: int, seed: int) -> list[Node]:
    """k nodes drawn without replacement (seeded), in discovery order; all when fewer."""
    if len(nodes) <= k:
        return list(nodes)
    picked = sorted(random.Random(f"tcia-sample:{seed}").sample(range(len(nodes)), k))
    return [nodes[i] for i in picked]


def explore(seed: InstructionState, db: SearchDB, embed: EmbedFn, config: SearchConfig | None = None) -> SearchResult:
    """Run the BFS from `seed` (see module docstring); `embed` must be the database's embedder."""
    config = config or SearchConfig()
    search = _Search(seed, db, embed, config)
    search.run()
    return SearchResult(seed, search.nodes, sample_nodes(search.nodes, config.samples, config.seed),
                        search.counts, search.retrieved, config)

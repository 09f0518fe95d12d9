"""BFS over constraint edits (TCIA step 3) on a hand-made database with exact vectors."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pydantic import ValidationError

from ontask.tcia.database import ConstraintDB, build_database
from ontask.tcia.search import SearchConfig, explore, node_to_json
from ontask.tcia.state import Constraint, Edit, InstructionState

DIM = 12


def _unit(*parts: tuple[int, float]) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    for i, w in parts:
        v[i] += w
    return v / np.linalg.norm(v)


A, B, C, D, E = ("Apologise for the inconvenience", "Keep the reply under 100 words", "Offer a refund or replacement",
                 "Sign off with the agent's name", "Keep the reply under 120 words")
S = "Mention the order number"  # a seed constraint that is not in the database
M1, M2, M3 = "Use at most 5 bullet points", "List action items with owners", "Write in English"
TABLE = {
    "Customer support reply": _unit((0, 1)),
    "Support email response": _unit((0, 1), (1, 0.2)),  # cosine 0.98: same cluster
    "Meeting summarization": _unit((2, 1)),
    A: _unit((3, 1)),
    B: _unit((4, 1)),
    E: _unit((4, 1), (5, 0.25)),  # 0.970 to B: a near-duplicate
    C: _unit((4, 1), (6, 1)),  # 0.707 to B
    D: _unit((3, 1), (7, 1)),  # 0.707 to A
    S: _unit((11, 1), (6, 0.5)),  # 0.316 to C, 0 to the rest
    M1: _unit((8, 1)), M2: _unit((9, 1)), M3: _unit((10, 1)),
}


class FakeEmbedder:
    name = "fake-table"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts):
        self.calls.append(list(texts))
        return np.stack([TABLE[t] for t in texts]) if texts else np.zeros((0, DIM), np.float32)


def con(text: str) -> dict:
    return {"text": text, "category": "Content"}


RECORDS = [
    {"task_type": "Customer support reply", "base_query": "q", "constraints": [con(A), con(B)]},
    {"task_type": "Support email response", "base_query": "q", "constraints": [con(B), con(C), con(D)]},
    {"task_type": "Customer support reply", "base_query": "q", "constraints": [con(E)]},
    {"task_type": "Meeting summarization", "base_query": "q", "constraints": [con(M1), con(M2), con(M3)]},
]


@pytest.fixture(scope="module")
def db():
    # near_duplicate=None keeps E in the database so the search's own guard is exercised.
    return build_database(RECORDS, FakeEmbedder(), near_duplicate=None)


def seed_state(*cons: str, task_type: str = "Customer support reply") -> InstructionState:
    return InstructionState.make(task_type, "Answer the customer's complaint", [Constraint(t) for t in cons])


def keys(state: InstructionState) -> set[str]:
    return {c.text for c in state.constraints}


def run(db, start, embedder=None, **cfg):
    return explore(start, db, (embedder or FakeEmbedder()).embed, SearchConfig(**cfg))


def replay(seed: InstructionState, path: tuple[Edit, ...]) -> InstructionState:
    """Independent of search.apply_edit: rebuild the state from the seed's constraints."""
    texts = {c.key: c for c in seed.constraints}
    for edit in path:
        if edit.removed is not None:
            assert edit.removed.key in texts
            del texts[edit.removed.key]
        if edit.added is not None:
            assert edit.added.key not in texts
            texts[edit.added.key] = edit.added
    return InstructionState.make(seed.task_type, seed.base_query, texts.values())


def check_invariants(result, seed, cfg: SearchConfig) -> None:
    hashes = [n.state_hash for n in result.nodes]
    assert len(hashes) == len(set(hashes)) and seed.state_hash not in hashes
    assert len(result.nodes) <= cfg.max_states
    assert len(result.sampled) == min(cfg.samples, len(result.nodes))
    position = {h: i for i, h in enumerate(hashes)}
    sampled_pos = [position[n.state_hash] for n in result.sampled]
    assert sampled_pos == sorted(set(sampled_pos))  # a subset, in discovery order
    for node in result.nodes:
        assert node.state.task_type == seed.task_type and node.state.base_query == seed.base_query
        assert 1 <= node.hop <= cfg.hops and node.hop == len(node.path)
        assert node.state.constraints
        assert replay(seed, node.path) == node.state
        for edit in node.path:
            if edit.op == "replace":
                assert edit.removed.key != edit.added.key
                assert float(TABLE[edit.removed.text] @ TABLE[edit.added.text]) < cfg.near_duplicate
    assert [n.hop for n in result.nodes] == sorted(n.hop for n in result.nodes)  # BFS order
    produced = sum(result.counts.attempted.values()) - sum(result.counts.skipped.values())
    assert produced == len(result.nodes) == result.counts.produced


def test_hand_derived_one_hop_one_draw_each(db):
    # Pool of the support cluster, in first-seen order: [A, B, C, D, E]. Seed C = (A, S).
    # random.Random(0): randrange(2)=1, randrange(5)=3, randrange(2)=0, so
    # remove -> drop S; add -> pool[3] = D; replace -> A by its nearest legal neighbour D.
    assert [(r := random.Random(0)).randrange(2), r.randrange(5), r.randrange(2)] == [1, 3, 0]
    seed = seed_state(A, S)
    result = run(db, seed, hops=1, per_op=1, seed=0)
    assert [keys(n.state) for n in result.nodes] == [{A}, {A, D, S}, {D, S}]
    assert [[e.op for e in n.path] for n in result.nodes] == [["remove"], ["add"], ["replace"]]
    assert result.nodes[2].path[0] == Edit("replace", removed=Constraint(A), added=Constraint(D))
    assert result.counts.attempted == {"remove": 1, "add": 1, "replace": 1}
    assert sum(result.counts.skipped.values()) == 0 and result.counts.expanded == 1
    # random.Random(2): 0, 0, 0 -> drop A; add pool[0] = A is already present; replace A by D.
    result = run(db, seed, hops=1, per_op=1, seed=2)
    assert [keys(n.state) for n in result.nodes] == [{S}, {D, S}]
    assert result.counts.skipped["already_present"] == 1
    check_invariants(result, seed, result.config)


def test_full_one_hop_neighbourhood_is_exactly_the_hand_list(db):
    seed = seed_state(A, S)
    result = run(db, seed, hops=1, per_op=60, seed=0)
    expected = [{S}, {A},  # remove
                {A, S, B}, {A, S, C}, {A, S, D}, {A, S, E},  # add (A is already present)
                {D, S}, {A, C}]  # replace A -> D (0.71), S -> C (0.32)
    got = [keys(n.state) for n in result.nodes]
    assert sorted(map(sorted, got)) == sorted(map(sorted, expected))
    assert result.counts.attempted == {"remove": 60, "add": 60, "replace": 60}
    check_invariants(result, seed, result.config)


def test_same_seed_same_nodes_other_seed_differs(db):
    seed = seed_state(A, S)
    cfg = dict(hops=3, per_op=2, max_states=40, samples=10)
    first, again = run(db, seed, seed=7, **cfg), run(db, seed, seed=7, **cfg)
    assert first.nodes == again.nodes and first.sampled == again.sampled and first.counts == again.counts
    other = run(db, seed, seed=8, **cfg)
    assert [n.state_hash for n in other.nodes] != [n.state_hash for n in first.nodes]
    for r in (first, other):
        check_invariants(r, seed, r.config)


def test_max_states_is_a_count_of_unique_states(db):
    seed = seed_state(A, S)
    big = run(db, seed, hops=3, per_op=10, max_states=10_000, samples=5)
    assert big.counts.stopped == "queue_empty" and len(big.nodes) > 12
    capped = run(db, seed, hops=3, per_op=10, max_states=12, samples=5)
    assert len(capped.nodes) == 12 and capped.counts.stopped == "max_states"
    assert capped.nodes == big.nodes[:12]  # same stream, stopped early
    assert len(capped.sampled) == 5
    everything = run(db, seed, hops=3, per_op=10, max_states=12, samples=50)
    assert everything.sampled == everything.nodes
    for r in (big, capped, everything):
        check_invariants(r, seed, r.config)


def test_replace_skips_itself_and_near_duplicates(db):
    seed = seed_state(B, S)
    result = run(db, seed, hops=1, per_op=40)
    replaced_b = [n.path[0].added.text for n in result.nodes
                  if n.path[0].op == "replace" and n.path[0].removed.text == B]
    assert replaced_b == [C]  # E is 0.97 to B: a near-duplicate, never chosen
    loose = run(db, seed, hops=1, per_op=40, near_duplicate=0.99)
    assert E in [n.path[0].added.text for n in loose.nodes if n.path[0].op == "replace"]
    check_invariants(result, seed, result.config)


def test_single_constraint_is_never_removed_and_empty_seed_only_adds(db):
    seed = seed_state(B)
    result = run(db, seed, hops=1, per_op=5)
    assert result.counts.skipped["empty_constraints"] == 5 and result.counts.attempted["remove"] == 5
    empty = seed_state()
    result = run(db, empty, hops=2, per_op=5)
    first_hop = [n for n in result.nodes if n.hop == 1]
    assert first_hop and all(n.path[0].op == "add" for n in first_hop)
    assert result.counts.skipped["no_candidate"] >= 5  # replace on the empty seed
    check_invariants(result, empty, result.config)


def test_retrieval_follows_the_task_type(db):
    seed = seed_state(M1, task_type="Meeting summarization")
    result = run(db, seed, hops=2, per_op=10)
    assert all(keys(n.state) <= {M1, M2, M3} for n in result.nodes) and result.nodes
    info = next(iter(result.retrieved.values()))
    assert info.info.task_type == "Meeting summarization" and info.similarity == pytest.approx(1.0)
    assert len(result.retrieved) == result.counts.expanded
    check_invariants(result, seed, result.config)


def test_each_text_is_embedded_once(db):
    embedder = FakeEmbedder()
    run(db, seed_state(A, S), embedder, hops=3, per_op=10)
    flat = [t for call in embedder.calls for t in call]
    assert len(flat) == len(set(flat))
    assert flat[0] == "Customer support reply"  # T, once


def test_loaded_database_gives_the_same_search_and_json_forms(db, tmp_path):
    seed = seed_state(A, S)
    loaded = ConstraintDB.load(db.save(tmp_path / "db"), expect_embedder=FakeEmbedder.name)
    first, again = run(db, seed, hops=2, per_op=3), run(loaded, seed, hops=2, per_op=3)
    assert first.nodes == again.nodes and first.nodes
    counts = dict(first.counts.items())
    assert counts == first.counts.to_json() and counts["produced"] == len(first.nodes)
    j = node_to_json(first.nodes[0])
    assert j["hop"] == 1 and j["parent"] == seed.state_hash and j["path"][0]["op"] == first.nodes[0].path[0].op


def test_config_validation():
    assert SearchConfig().model_dump() == {"hops": 3, "per_op": 10, "max_states": 2700, "samples": 2000,
                                           "seed": 0, "near_duplicate": 0.95}
    for bad in ({"hops": 0}, {"per_op": 0}, {"max_states": -1}, {"samples": 0}, {"near_duplicate": 1.5},
                {"near_duplicate": 0}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            SearchConfig(**bad)

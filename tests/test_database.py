"""The constraint database (TCIA step 2) on a small hand-made corpus with exact vectors."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from ontask.tcia.database import ConstraintDB, DatabaseError, DBRecord, RecordError, build_database, parse_records
from ontask.tcia.state import Constraint

DIM = 16


def _unit(*parts: tuple[int, float]) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    for i, w in parts:
        v[i] += w
    return v / np.linalg.norm(v)


# Exact vectors: the two support types are 0.98 similar (cosine distance 0.02 < eps 0.15),
# meeting summarization is orthogonal to both. "under 120 words" is a 0.97 near-duplicate
# of "under 100 words"; "Offer a refund" is 0.71 similar to it.
TABLE = {
    "Customer support reply": _unit((0, 1)),
    "Support email response": _unit((0, 1), (1, 0.2)),
    "Meeting summarization": _unit((2, 1)),
    "Apologise for the inconvenience": _unit((3, 1)),
    "Keep the reply under 100 words": _unit((4, 1)),
    "Keep the reply under 120 words": _unit((4, 1), (5, 0.25)),
    "Offer a refund or replacement": _unit((4, 1), (6, 1)),
    "Sign off with the agent's name": _unit((3, 1), (7, 1)),
    "Use at most 5 bullet points": _unit((8, 1)),
    "List action items with owners": _unit((9, 1)),
    "Write in English": _unit((10, 1)),
}


class FakeEmbedder:
    """Table vectors for known texts (matched after trimming end punctuation), else hashed words."""

    def __init__(self, name: str = "fake-table") -> None:
        self.name, self.calls = name, []

    def vector(self, text: str) -> np.ndarray:
        key = text.strip().rstrip(".")
        if key in TABLE:
            return TABLE[key]
        v = np.zeros(DIM, dtype=np.float32)
        for word in key.lower().split():
            v[11 + int(hashlib.sha256(word.encode()).hexdigest(), 16) % 5] += 1
        return v / max(float(np.linalg.norm(v)), 1e-9)

    def embed(self, texts):
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, DIM), np.float32)


def c(text: str, category: str = "Content", **extra) -> dict:
    return {"text": text, "category": category, **extra}


RECORDS = [
    {"task_type": "Customer support reply", "base_query": "Reply to the customer's email",
     "constraints": [c("Apologise for the inconvenience", "Style/Tone"),
                     c("Keep the reply under 100 words", "Numerical", simplified_query="Reply, apologising.")]},
    {"task_type": "Support email response", "base_query": "Answer the support ticket",
     "constraints": [c("keep the reply under 100 words.", "numerical constraints"),
                     c("Offer a refund or replacement"), c("Sign off with the agent's name", "Format")]},
    {"task_type": "customer support reply ", "base_query": "Reply to the complaint",
     "constraints": [c("Keep the reply under 120 words", "Numerical")]},
    {"task_type": "Meeting summarization", "base_query": "Summarize the meeting",
     "constraints": [c("Use at most 5 bullet points", "Format"), c("List action items with owners")]},
    {"task_type": "Meeting summarization", "base_query": "Summarize the call",
     "constraints": [c("Write in English", "Language")]},
    {"task_type": "Meeting summarization", "base_query": "Summarize this", "constraints": []},
]


def build(**kw) -> ConstraintDB:
    kw.setdefault("near_duplicate", None)
    return build_database(RECORDS, FakeEmbedder(), **kw)


def texts(cons) -> list[str]:
    return [x.text for x in cons]


def test_clusters_merge_near_identical_task_types():
    db = build()
    assert (db.n_records, db.n_task_types, db.n_clusters, db.n_constraints) == (6, 3, 2, 8)
    support = db.cluster_of_task_type("Support email response")
    assert support == db.cluster_of_task_type("CUSTOMER SUPPORT REPLY.")
    meeting = db.cluster_of_task_type("Meeting summarization")
    assert meeting != support and db.cluster_of_task_type("Unknown") is None
    info = db.cluster_info(support)
    assert info.members == ("Customer support reply", "Support email response")
    assert info.task_type == "Customer support reply"  # most records (2 of 3)
    assert db.nearest_cluster(TABLE["Meeting summarization"]) == meeting
    cluster, score = db.nearest_cluster_with_score(_unit((0, 1), (1, 0.1)))
    assert cluster == support and score == pytest.approx(1.0, abs=0.01)


def test_constraints_union_dedup_categories_counts():
    db = build()
    support = db.cluster_of_task_type("Customer support reply")
    assert db.constraints(support) == [
        Constraint("Apologise for the inconvenience", "Style/Tone"),
        Constraint("Keep the reply under 100 words", "Numerical"),
        Constraint("Offer a refund or replacement", "Content"),
        Constraint("Sign off with the agent's name", "Format"),
        Constraint("Keep the reply under 120 words", "Numerical"),
    ]
    counts = {con.text: n for con, n in db.constraint_counts(support)}
    assert counts["Keep the reply under 100 words"] == 2
    meeting = db.cluster_of_task_type("Meeting summarization")
    assert texts(db.constraints(meeting)) == ["Use at most 5 bullet points", "List action items with owners",
                                              "Write in English"]
    assert db.simplified_query(Constraint("keep the reply under 100 words")) == "Reply, apologising."
    assert db.simplified_query(Constraint("Write in English")) is None


def test_similar_constraints_exact_cosine_nearest_first():
    db = build()
    support = db.cluster_of_task_type("Customer support reply")
    got = db.similar_constraints(support, TABLE["Keep the reply under 100 words"], 3)
    assert texts(x for x, _ in got) == ["Keep the reply under 100 words", "Keep the reply under 120 words",
                                        "Offer a refund or replacement"]
    assert [s for _, s in got] == pytest.approx([1.0, 1 / np.sqrt(1.0625), 1 / np.sqrt(2)], abs=1e-5)
    assert len(db.similar_constraints(support, TABLE["Write in English"], 50)) == 5


def test_near_duplicates_fold_into_the_more_frequent():
    db = build(near_duplicate=0.95)
    support = db.cluster_of_task_type("Customer support reply")
    counts = {con.text: n for con, n in db.constraint_counts(support)}
    assert "Keep the reply under 120 words" not in counts
    assert counts["Keep the reply under 100 words"] == 3
    assert db.describe()["folded_near_duplicates"] == 1


def test_min_samples_noise_becomes_singleton_clusters():
    db = build(min_samples=3)
    assert db.n_clusters == 3
    assert len({db.cluster_of_task_type(t) for t in ("Customer support reply", "Support email response")}) == 2


def test_save_load_round_trip_identical_answers(tmp_path):
    db = build()
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "decomposed.jsonl").write_text("{}\n")  # the CLI keeps this beside the database
    path = db.save(tmp_path / "db")
    db.save(tmp_path / "db")  # overwriting is atomic too and leaves nothing behind
    names = sorted(p.name for p in path.iterdir())
    assert names[0] == "constraint-db-" + db.fingerprint[:12] + names[0][-9:] and len(names) == 3
    assert names[1:] == ["decomposed.jsonl", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]
    loaded = ConstraintDB.load(path, expect_embedder="fake-table")
    assert loaded.describe() == db.describe()
    assert loaded.load_seconds is not None
    for cluster in range(db.n_clusters):
        assert loaded.constraints(cluster) == db.constraints(cluster)
        assert loaded.constraint_counts(cluster) == db.constraint_counts(cluster)
        assert loaded.cluster_info(cluster) == db.cluster_info(cluster)
        for vec in TABLE.values():
            assert loaded.similar_constraints(cluster, vec, 4) == db.similar_constraints(cluster, vec, 4)
    for vec in TABLE.values():
        assert loaded.nearest_cluster_with_score(vec) == db.nearest_cluster_with_score(vec)
    assert loaded.simplified_query(Constraint("Keep the reply under 100 words")) == "Reply, apologising."


def test_fingerprint_is_content_identity():
    assert build().fingerprint == build().fingerprint
    assert build().fingerprint != build(min_samples=3).fingerprint
    assert build().fingerprint != build_database(RECORDS[:-1], FakeEmbedder(), near_duplicate=None).fingerprint
    d = build().describe()
    assert {"records", "task_types", "clusters", "constraints", "eps", "min_samples", "embedder",
            "build_seconds", "fingerprint"} <= d.keys()


def test_load_checks_embedder_version_and_presence(tmp_path):
    path = build().save(tmp_path / "db")
    with pytest.raises(DatabaseError, match="different embedding spaces"):
        ConstraintDB.load(path, expect_embedder="all-MiniLM-L6-v2@gt-0.1.0")
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DatabaseError, match="format 99"):
        ConstraintDB.load(path)
    with pytest.raises(DatabaseError, match="no constraint database"):
        ConstraintDB.load(tmp_path / "missing")
    (path / "manifest.json").write_text(json.dumps({**manifest, "data": "../elsewhere"}))
    with pytest.raises(DatabaseError, match="no valid data folder"):
        ConstraintDB.load(path)
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / manifest["data"] / "centroids.npy").unlink()
    with pytest.raises(DatabaseError, match="incomplete or corrupt"):
        ConstraintDB.load(path)


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda r: r.pop("task_type"), "task_type"),
    (lambda r: r.update(task_type="  "), "task_type"),
    (lambda r: r.update(constraints="Be brief"), "constraints"),
    (lambda r: r["constraints"][1].update(category="Bogus"), "constraints[1].category"),
    (lambda r: r["constraints"][0].pop("text"), "constraints[0].text"),
    (lambda r: r["constraints"].append("Be brief"), "constraints[2]"),
])
def test_bad_record_names_index_and_field(mutate, field):
    records = json.loads(json.dumps(RECORDS))
    mutate(records[3])
    with pytest.raises(RecordError) as info:
        build_database(records, FakeEmbedder())
    assert (info.value.index, info.value.field) == (3, field)
    assert f"record 3: field '{field}'" in str(info.value)
    with pytest.raises(RecordError):
        parse_records(records)


def test_parse_accepts_records_and_constraint_objects():
    rec = DBRecord.parse({"task_type": "T", "constraints": [Constraint("Be brief", "Style/Tone")]}, 0)
    assert rec.base_query == "" and rec.constraints == (Constraint("Be brief", "Style/Tone"),)
    assert DBRecord.parse(rec, 5) is rec
    with pytest.raises(ValueError, match="no records"):
        build_database([], FakeEmbedder())


def test_embedded_minilm_clusters_support_types_not_meetings():
    from ontask.embed import load_embedder

    embedder = load_embedder("embedded")
    records = [
        {"task_type": "Customer support reply", "base_query": "q", "constraints": [c("Be polite", "Style/Tone")]},
        {"task_type": "Customer support response", "base_query": "q", "constraints": [c("Offer a refund")]},
        {"task_type": "Meeting summarization", "base_query": "q", "constraints": [c("Use bullet points", "Format")]},
    ]
    db = build_database(records, embedder)
    support = db.cluster_of_task_type("Customer support reply")
    assert db.cluster_of_task_type("Customer support response") == support
    assert db.cluster_of_task_type("Meeting summarization") != support
    assert db.nearest_cluster(embedder.embed(["Replying to a customer support email"])[0]) == support
    assert db.embedder_name == embedder.name


def test_near_pair_search_dense_and_faiss_paths_agree():
    from ontask.tcia.database.cluster import _near_pairs

    rng = np.random.default_rng(0)
    base = rng.standard_normal((40, 32)).astype(np.float32)
    vecs = np.concatenate([base, base[:10] + 0.05 * rng.standard_normal((10, 32)).astype(np.float32)])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    dense = _near_pairs(vecs, 0.95)
    assert {i: sorted(js) for i, js in _near_pairs(vecs, 0.95, dense_limit=0).items()} == \
        {i: sorted(js) for i, js in dense.items()}
    assert sorted(dense) == sorted([*range(10), *range(40, 50)])


def test_progress_reports_embedding_batches():
    seen = []
    build_database(RECORDS, FakeEmbedder(), batch=3, progress=lambda what, done, total: seen.append((what, done, total)))
    assert seen == [("task types", 3, 3), ("constraints", 3, 8), ("constraints", 6, 8), ("constraints", 8, 8)]

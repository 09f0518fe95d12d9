"""`variants` alternatives (one constraint removed or replaced) and per-constraint specificity."""

from __future__ import annotations

import json
import math
from importlib.resources import files
from pathlib import Path

import pytest

from ontask.models.base import PassRequest, PassResult, build_user_turn
from ontask.cache import ResultCache
from ontask.embed import load_embedder
from ontask.models import CachedGenerator, load_generator
from ontask.records import Example, Location
from ontask.scoring import ScoreConfig, run_score
from ontask.scoring.plan import plan_row, row_scores
from ontask.tcia.database import build_database
from ontask.tcia.state import Constraint, InstructionState
from ontask.tcia.variants import Variant, VariantMaker, VariantSet, cut, state_from_row
from ontask.testing.fake_server import FakeServer
from ontask.testing.tcia_handler import tcia_chat_handler

from test_scoring_exact import hand_logprob

DATA = Path(str(files("ontask") / "data"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.mark.parametrize("instruction,span,replacement,want", [
    ("Summarise the notes. Use at most 3 bullet points. Do not use commas.", "Use at most 3 bullet points", None,
     "Summarise the notes. Do not use commas."),
    ("Summarise the notes. Use at most 3 bullet points. Do not use commas.", "do not use commas.", None,
     "Summarise the notes. Use at most 3 bullet points."),
    ("Summarise the notes. Use at most 3 bullet points.", "Use at most 3 bullet points", "Answer in one sentence",
     "Summarise the notes. Answer in one sentence."),
    ("Write a poem, and keep it under 50 words.", "keep it under 50 words", None, "Write a poem."),
    ("Summarise the notes.", "Use a friendly tone", None, None),  # not verbatim: the composer's job
])
def test_cut_removes_or_replaces_a_verbatim_constraint(instruction, span, replacement, want):
    assert cut(instruction, span, replacement) == want


ROWS = [
    {"instruction": "Summarise the meeting notes. Use exactly three bullet points. Do not use any commas.",
     "input": "We met on Monday about the budget, hiring and the launch date.",
     "output": "* Budget agreed\n* Hiring paused\n* Launch in May",
     "task_type": "Summarization", "base_query": "Summarise the meeting notes.",
     "constraints": [{"text": "Use exactly three bullet points", "category": "Format"},
                     {"text": "Do not use any commas", "category": "Format"}]},
    {"instruction": "Translate the sentence into French. Answer in lowercase letters only.",
     "input": "The weather is nice today.", "output": "il fait beau aujourd'hui.",
     "task_type": "Translation", "base_query": "Translate the sentence into French.",
     "constraints": [{"text": "Answer in lowercase letters only", "category": "Style/Tone"}]},
    {"instruction": "Classify the review as positive or negative.", "input": "I loved it!", "output": "positive",
     "task_type": "Classification", "base_query": "Classify the review as positive or negative.", "constraints": []},
]
CUT = {  # the instructions without each constraint, written by hand
    0: ["Summarise the meeting notes. Do not use any commas.", "Summarise the meeting notes. Use exactly three bullet points."],
    1: ["Translate the sentence into French."],
}


def test_per_constraint_specificity_matches_a_hand_computation(tmp_path, tiny_dir, tiny_scorer, cache):
    src = tmp_path / "in.jsonl"
    write_jsonl(src, ROWS)
    maker = VariantMaker(decomposer=None, composer=None, verifier=None)  # every constraint is verbatim: no model
    cfg = ScoreConfig(scorer=f"hf:{tiny_dir}", metrics=["tss"], alternatives="variants", k=4)
    manifest = run_score(src, tmp_path / "out", cfg, scorer=tiny_scorer, cache=cache, variants=maker)
    out = read_jsonl(tmp_path / "out" / "data.jsonl")
    failed = read_jsonl(tmp_path / "out" / "failed.jsonl")
    assert manifest["counts"]["variants_cut"] == 3 and manifest["counts"]["variants_composed"] == 0
    assert len(out) == 2 and len(failed) == 1 and "no constraints to vary" in failed[0]["reason"]
    for i, got in enumerate(out):
        row = ROWS[i]

        def lp(instruction: str) -> float:
            s, n = hand_logprob(tiny_scorer, PassRequest(build_user_turn(instruction, row["input"]), row["output"]))
            return s / n

        lp_true = lp(row["instruction"])
        want = [lp_true - lp(text) for text in CUT[i]]
        assert got["constraints"] == row["constraints"]  # the row's own list, kept as it was
        assert got["constraint_specificity"] == pytest.approx(want, abs=1e-5)
        alt = [lp(text) for text in CUT[i]]
        assert got["tss"] == pytest.approx(lp_true - math.log(sum(math.exp(a) for a in alt) / len(alt)), abs=1e-5)
    variants = read_jsonl(tmp_path / "out" / "variants.jsonl")
    assert [v["text"] for v in variants[0]["variants"]] == CUT[0]


def _plan_with(lp_true: float, remove_lps: list[float | None], constraints: list[str], output: str):
    ex = Example("Write. " + " ".join(c + "." for c in constraints), "", output, Location("t.jsonl", 1))
    vs = VariantSet([Constraint(c) for c in constraints],
                    [Variant("remove", i, text=f"without {i}" if lp_ is not None else None) for i, lp_ in enumerate(remove_lps)])
    cfg = ScoreConfig(metrics=["tss"], alternatives="variants")
    plan = plan_row(0, ex, cfg, {"variants": vs.texts(4)}, vs)
    results = {plan.true: PassResult(lp_true * 4, 4, 10)}
    for (text, req) in plan.alternatives["variants"]:
        i = int(text.split()[-1])
        results[req] = PassResult(remove_lps[i] * 4, 4, 10)
    return plan, results, cfg


def test_a_constraint_is_flagged_only_when_violated_and_the_output_does_not_depend_on_it():
    constraints = ["Do not use any commas", "Answer with at least 5 words", "Be kind"]
    # The output has a comma (violates 1), 3 words (violates 2); "Be kind" has no checker.
    plan, results, cfg = _plan_with(-2.0, [-2.5, -1.5, -3.0], constraints, "Yes, fine thanks")
    row = row_scores(plan, results, cfg)
    assert row["constraint_specificity"] == pytest.approx([0.5, -0.5, 1.0])
    assert row["constraint_checks"] == [False, False, None]
    assert row["violated_constraints"] == constraints[:2]
    assert row["ignored_constraints"] == ["Answer with at least 5 words"]  # violated and specificity <= 0
    # A missing Remove variant gives no specificity and no flag, never a made-up number.
    plan, results, cfg = _plan_with(-2.0, [None, -1.5, -3.0], constraints, "Yes, fine thanks")
    row = row_scores(plan, results, cfg)
    assert row["constraint_specificity"][0] is None and row["ignored_constraints"] == ["Answer with at least 5 words"]


def test_variants_without_a_decomposition_are_decomposed_composed_and_verified(tmp_path, tiny_dir, tiny_scorer):
    """Rows with no base_query/constraints: decomposer, then Remove and Replace written by the composer."""
    cache = ResultCache(tmp_path / "cache.sqlite")
    embedder = load_embedder("embedded", cache=cache)
    db = build_database(read_jsonl(DATA / "demo_constraints.jsonl"), embedder)
    rows = [{"instruction": "Reply to the customer's message below as a Brightleaf Home support agent. Apologise once, "
                            "give one concrete next step, and keep the reply under 120 words.",
             "input": f"Order BH-{n} is late.", "output": f"Sorry about order BH-{n}. It ships tomorrow."} for n in (1, 2)]
    rows.append({"instruction": "Write a short thank-you note to a colleague; mention the launch and sign with your first name.",
                 "input": "", "output": "Thanks for the launch help! - Sam"})
    src = tmp_path / "in.jsonl"
    write_jsonl(src, rows)
    with FakeServer(chat_handler=tcia_chat_handler, model_name="tiny") as server:
        gen = CachedGenerator(load_generator("openai:tiny", base_url=server.base_url), cache)
        maker = VariantMaker(decomposer=gen, composer=gen, verifier=gen, db=db, embedder=embedder)
        cfg = ScoreConfig(scorer=f"hf:{tiny_dir}", metrics=["tss"], alternatives="variants", k=6)
        manifest = run_score(src, tmp_path / "out", cfg, scorer=tiny_scorer, cache=cache, variants=maker)
        sent_first = gen.stats.to_json()["sent"]
        run_score(src, tmp_path / "again", cfg, scorer=tiny_scorer, cache=cache, variants=maker)
        sent_second = gen.stats.to_json()["sent"] - sent_first
    variants = read_jsonl(tmp_path / "out" / "variants.jsonl")
    out = read_jsonl(tmp_path / "out" / "data.jsonl")
    assert len(variants) == 2  # distinct instructions
    support, note = variants
    ops = [x["op"] for x in support["variants"]]
    assert ops.count("remove") == len(support["constraints"]) >= 2
    assert "replace" in ops  # the database has neighbours for support replies
    for x in support["variants"]:
        assert (x["text"] is None) == (x["failure"] is not None)
    # One sentence: the (fake) decomposer finds no constraint, so the row fails with that reason.
    assert note["constraints"] == [] and note["failure"] == "no constraints to vary"
    failed = read_jsonl(tmp_path / "out" / "failed.jsonl")
    assert len(failed) == 1 and "no constraints to vary" in failed[0]["reason"]
    for row in out:  # decomposed here: the constraints are added to the row, aligned with the scores
        assert [c["text"] for c in row["constraints"]] == [c["text"] for c in variants[0]["constraints"]]
        assert len(row["constraint_specificity"]) == len(row["constraints"])
        assert row["tss_top_alt"] in [x["text"] for v in variants for x in v["variants"]]
    assert manifest["counts"]["variants_composed"] + manifest["counts"]["variants_cut"] > 0
    assert manifest["variants"]["composer"] == "openai:tiny"
    assert sent_second == 0  # the rerun paid for nothing: every call came from the cache


def test_state_from_row_reads_a_carried_decomposition():
    st = state_from_row(ROWS[0])
    assert isinstance(st, InstructionState) and [c.text for c in st.constraints] == [
        "Use exactly three bullet points", "Do not use any commas"]
    assert state_from_row({"instruction": "x"}) is None

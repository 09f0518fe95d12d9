"""The constraint-to-checker mapping, measured on constraint sentences cut by hand from IFEval prompts.

`tests/data/ifeval_cut50.json` (the first 50 prompts of ../shared/data/ifeval_dev.jsonl) and
`tests/data/ifeval_cut_heldout.json` (the next 50, cut by someone who had not seen the
mapper) hold, per prompt, the character span of each constraint and the checker id and
parameters it implies. The prompts themselves stay in the shared folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import shared
from ontask.checks.evaluate import read_prompts, score_hand_cut
from ontask.checks.mapper import CheckSpec, map_constraint, number, relation

FIXTURES = Path(__file__).parent / "data"


@pytest.mark.parametrize("fixture", ["ifeval_cut50.json", "ifeval_cut_heldout.json"])
def test_mapper_finds_the_checker_and_its_parameters_for_hand_cut_constraints(fixture):
    if not (FIXTURES / fixture).exists():
        pytest.skip(f"{fixture} not present")
    score = score_hand_cut(read_prompts(shared("ifeval_dev.jsonl")),
                           json.loads((FIXTURES / fixture).read_text(encoding="utf-8")))
    print(f"\n{fixture}: {score.total} constraints, type {score.type_rate:.1%}, "
          f"type and parameters {score.exact_rate:.1%}")
    for m in score.misses:
        print("  miss", m)
    assert score.exact_rate >= 0.8


@pytest.mark.parametrize("text,want", [
    ("Answer with at least 300 words.", [("length_constraints:number_words", {"relation": "at least", "num_words": 300})]),
    ("Answer with at most 50 words", [("length_constraints:number_words", {"relation": "less than", "num_words": 51})]),
    ("Write more than 3 sentences.", [("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 4})]),
    ("Use exactly four bullet points.", [("detectable_format:number_bullet_lists", {"num_bullets": 4})]),
    ("Do not use any commas in your reply.", [("punctuation:no_comma", {})]),
    ("Your ENTIRE response should be in Hindi, no other language is allowed.", [("language:response_language", {"language": "hi"})]),
    ("Wrap your entire output in JSON format.", [("detectable_format:json_format", {})]),
    ("End your email with 'Best, Sam'.", [("startend:end_checker", {"end_phrase": "Best, Sam"})]),
    # IFEval counts bullets and paragraphs exactly: a cap is the judge's to check, not code's
    ("Use at most 5 bullet points", []),
    ("Write at most 3 paragraphs.", []),
    ("Include at most 2 placeholders like [name].", []),
    ("Apologise once", []),
    ("Use a warm, professional tone", []),
])
def test_mapper_reads_common_phrasings(text, want):
    got = [(s.instruction_id, s.kwargs) for s in map_constraint(text)]
    assert got == want


def test_numbers_and_relations_follow_ifeval_conventions():
    assert [number(x) for x in ("300", "1,000", "three", "a single", "twice", "many")] == [300, 1000, 3, 1, 2, None]
    assert relation("at most", 5) == [("less than", 6)]
    assert relation("more than", 5) == [("at least", 6)]
    assert relation("exactly", 5) == [("at least", 5), ("less than", 6)]
    assert CheckSpec("punctuation:no_comma").to_json() == {"instruction_id": "punctuation:no_comma", "kwargs": {}}


def test_mapped_checks_pass_satisfying_responses_and_catch_ignored_constraints():
    """Hand-written responses (tests/data/ifeval_responses.json) through mapper + checkers."""
    from ontask.checks.verify import check_constraints

    prompts = read_prompts(shared("ifeval_dev.jsonl"))
    cuts = {r["key"]: r for r in json.loads((FIXTURES / "ifeval_cut50.json").read_text(encoding="utf-8"))}
    cases = json.loads((FIXTURES / "ifeval_responses.json").read_text(encoding="utf-8"))
    caught = 0
    for case in cases:
        prompt = prompts[case["key"]]
        spans = cuts[case["key"]]["constraints"]
        texts = [prompt[c["span"][0]: c["span"][1]] for c in spans]
        target = texts[[c["instruction_id"] for c in spans].index(case["target"])]
        ok = check_constraints(texts, case["satisfy"], prompt)
        assert [c.constraint for c in ok if c.passed is False] == [], case["key"]
        bad = check_constraints(texts, case["ignore"], prompt)
        caught += any(c.constraint == target and c.passed is False for c in bad)
    print(f"\nignored target caught in {caught} of {len(cases)}")
    assert caught == len(cases)

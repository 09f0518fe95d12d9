"""Pure pieces of TCIA: structured parsing, the state model, metrics, judges, the call cache."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydantic import BaseModel, Field

from ontask.models import CachedGenerator, ChatRequest, ChatResult, ChoiceRequest, ChoiceResult, GenError, Usage
from ontask.models.structured import StructuredError, parse_structured
from ontask.tcia.compose import clean_instruction, missing_constraints
from ontask.tcia.judges import run_judge
from ontask.tcia.metrics import distance_sample, diversity, per_hop, ratio_per_hop, triu_pair
from ontask.tcia.schemas import Decomposition
from ontask.tcia.state import Constraint, InstructionState, normalise_category
from ontask.tcia.validate import VALIDITY, pick_inputs


class Item(BaseModel):
    name: str = Field(max_length=20)
    score: int = Field(ge=1, le=5)


# -- structured answers --------------------------------------------------------------------
def test_parse_structured_strict_and_repaired():
    assert parse_structured('{"name": "a", "score": 3}', Item) == ({"name": "a", "score": 3}, False)
    fenced = 'Sure! Here it is:\n```json\n{"name": "b", "score": 4}\n```\nAnything else?'
    assert parse_structured(fenced, Item) == ({"name": "b", "score": 4}, True)
    trailing_comma = '{"name": "c", "score": 5,}'
    assert parse_structured(trailing_comma, Item) == ({"name": "c", "score": 5}, True)


@pytest.mark.parametrize("text, needle", [
    ("", "empty answer"),
    ('{"name": "a", "score": 9}', "score"),
    ('{"name": "a"}', "score"),
    ("no json at all", "not JSON"),
])
def test_parse_structured_failures_name_the_problem(text, needle):
    with pytest.raises(StructuredError, match=needle):
        parse_structured(text, Item)


def test_decomposition_normalises_categories():
    data, _ = parse_structured('{"is_complex": true, "languages": ["en"], "tasks": [{"task_type": "Summary", '
                               '"base_query": "Summarise.", "constraints": [{"text": "Use 3 bullets", '
                               '"category": "Format Constraints"}, {"text": "Be formal", "category": "style & tone"}]}]}',
                               Decomposition)
    assert [c["category"] for c in data["tasks"][0]["constraints"]] == ["Format", "Style/Tone"]


@pytest.mark.parametrize("raw, want", [("Format Constraints", "Format"), ("numeric", "Numerical"),
                                       ("Style/Tone", "Style/Tone"), ("input_placeholder", "Input Placeholder"),
                                       ("LANGUAGE", "Language"), ("content requirement", "Content")])
def test_normalise_category(raw, want):
    assert normalise_category(raw) == want


def test_unknown_category_is_an_error():
    with pytest.raises(ValueError, match="unknown constraint category"):
        normalise_category("vibes")


# -- state ---------------------------------------------------------------------------------
def test_state_hash_ignores_order_case_and_end_punctuation():
    a = InstructionState.make("Support reply", "Reply.", [Constraint("Be brief."), Constraint("Use 3 bullets", "Format")])
    b = InstructionState.make("Support reply", "Reply.", [Constraint("use 3 bullets"), Constraint("Be  brief")])
    c = InstructionState.make("Support reply", "Reply.", [Constraint("Be brief")])
    assert a.state_hash == b.state_hash != c.state_hash
    assert len(InstructionState.make("T", "Q", [Constraint("x"), Constraint("X.")]).constraints) == 1
    assert a.without(Constraint("use 3 bullets")).state_hash == c.state_hash
    assert InstructionState.from_json(a.to_json()) == a


# -- metrics -------------------------------------------------------------------------------
def test_diversity_is_one_minus_mean_pairwise_cosine():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(7, 5)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    brute = 1 - np.mean([float(v[i] @ v[j]) for i, j in itertools.combinations(range(7), 2)])
    assert diversity(v) == pytest.approx(brute, abs=1e-6)
    assert diversity(v[:1]) is None
    assert diversity(np.repeat(v[:1], 3, axis=0)) == pytest.approx(0.0, abs=1e-6)
    hops = per_hop([1, 1, 2, 2, 2, 3, 3], v)
    assert hops["2"] == pytest.approx(diversity(v[2:5]), abs=1e-6) and hops["all"] == pytest.approx(brute, abs=1e-6)


def test_triu_pair_inverts_the_upper_triangle_index():
    for n in (2, 3, 7, 50):
        i, j = np.triu_indices(n, k=1)
        got_i, got_j = triu_pair(np.arange(n * (n - 1) // 2), n)
        assert (got_i == i).all() and (got_j == j).all()


def test_distance_sample_is_all_pairs_when_small_and_a_seeded_subset_when_not():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(40, 6))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    everything = distance_sample(v, max_pairs=10_000)
    assert everything["pairs"] == everything["sampled"] == 780
    # The mean of all pairs' distances is the diversity.
    assert everything["mean_sampled"] == pytest.approx(diversity(v), abs=1e-9)
    part = distance_sample(v, max_pairs=100, seed=5)
    assert part["pairs"] == 780 and part["sampled"] == 100
    assert set(part["sample"]) <= set(everything["sample"])
    assert part == distance_sample(v, max_pairs=100, seed=5)
    assert part != distance_sample(v, max_pairs=100, seed=6)
    assert distance_sample(v[:1]) is None


def test_ratio_per_hop_counts_unjudged_apart():
    r = ratio_per_hop([1, 1, 2, 2], [True, None, False, True])
    assert r["1"] == {"ratio": 1.0, "judged": 1, "unjudged": 1}
    assert r["all"]["ratio"] == pytest.approx(2 / 3)


# -- compose helpers -----------------------------------------------------------------------
def test_missing_constraints_flags_no_and_unchecked():
    s = InstructionState.make("T", "Q", [Constraint("a rule"), Constraint("b rule"), Constraint("c rule")])
    v = {"checks": [{"id": 1, "satisfied": True, "reason": ""}, {"id": 2, "satisfied": False, "reason": "absent"}]}
    assert missing_constraints(s, v) == ["b rule: absent", "c rule (not checked)"]
    assert clean_instruction('Instruction: "Reply politely."') == "Reply politely."


def test_pick_inputs_is_seeded_per_state():
    a = pick_inputs("abc", 10, 3, seed=0)
    assert a == pick_inputs("abc", 10, 3, seed=0) and len(set(a)) == 3
    assert pick_inputs("abc", 2, 5, seed=0) == [0, 1]
    assert any(pick_inputs(h, 10, 3, seed=0) != a for h in ("abd", "abe", "abf"))


# -- a scripted backend for the cache and judge logic ----------------------------------------
class Scripted:
    """A Generator whose answers are a function of the request; counts what it was sent."""

    name = "scripted"
    fingerprint = "scripted-v1"
    supports_choice_probs = True

    def __init__(self, fail_on: str | None = None, crash_after: int | None = None):
        self.sent: list = []
        self.fail_on, self.crash_after = fail_on, crash_after

    def describe(self):
        return {"name": self.name}

    def chat(self, requests, on_result=None):
        out = []
        for i, r in enumerate(requests):
            if self.crash_after is not None and len(self.sent) >= self.crash_after:
                raise KeyboardInterrupt  # the process dies mid-batch
            self.sent.append(r)
            text = r.messages[-1]["content"]
            res = GenError("boom") if self.fail_on and self.fail_on in text else ChatResult(text.upper(), usage=Usage(3, 2))
            out.append(res)
            if on_result:
                on_result(i, res)
        return out

    def choice_probs(self, requests, on_result=None):
        out = []
        for i, r in enumerate(requests):
            self.sent.append(r)
            n = len(r.messages[-1]["content"]) % 5  # a distribution that depends on the prompt
            probs = {c: (2.0 if j == n else 1.0) for j, c in enumerate(r.choices)}
            z = sum(probs.values())
            out.append(ChoiceResult({c: p / z for c, p in probs.items()}, mass=0.9))
            if on_result:
                on_result(i, out[-1])
        return out


def _req(text):
    return ChatRequest.of([{"role": "user", "content": text}])


def test_cache_serves_repeats_and_never_caches_failures(cache):
    inner = Scripted(fail_on="bad")
    gen = CachedGenerator(inner, cache)
    first = gen.chat([_req("a"), _req("bad"), _req("a"), _req("b")])
    assert [type(r).__name__ for r in first] == ["ChatResult", "GenError", "ChatResult", "ChatResult"]
    assert len(inner.sent) == 3  # the duplicate "a" was sent once
    again = CachedGenerator(inner, cache).chat([_req("a"), _req("b"), _req("bad")])
    assert [r.cached for r in again[:2]] == [True, True] and again[0].text == "A"
    assert len(inner.sent) == 4  # only the failure was sent again
    assert gen.stats.prompt_tokens == 6 and gen.stats.failed == 1  # two answers sent, 3 tokens each


def test_answers_are_persisted_as_they_arrive(cache):
    crashing = Scripted(crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        CachedGenerator(crashing, cache).chat([_req(t) for t in "wxyz"])
    assert cache.count("chat") == 2  # the two answered calls survived the crash
    rerun = Scripted()
    out = CachedGenerator(rerun, cache).chat([_req(t) for t in "wxyz"])
    assert [r.text for r in out] == ["W", "X", "Y", "Z"]
    assert [r.messages[-1]["content"] for r in rerun.sent] == ["y", "z"]


def test_logprob_judge_is_the_expected_score_per_dimension(cache):
    gen = CachedGenerator(Scripted(), cache)
    out = run_judge(gen, VALIDITY, "auto", [{"instruction": "Do X.", "base_query": "X"}], [[("instruction", "Do X.")]])
    (j,) = out
    assert j.mode == "logprob" and set(j.scores) == {"validity", "consistency"}
    for dim, score in j.scores.items():
        # the scripted distribution: weight 2 on one digit, 1 on the others -> expectation is exact
        assert score == pytest.approx(sum(v * w for v, w in zip(range(1, 6), _weights(gen, dim))) / 6)
    assert j.mass == 0.9


def _weights(gen, dim):
    from ontask.tcia.prompts import messages

    text = messages("judge_dimension", question=VALIDITY.questions[dim].format(instruction="Do X.", base_query="X"),
                    material=[("instruction", "Do X.")])[-1]["content"]
    n = len(text) % 5
    return [2.0 if j == n else 1.0 for j in range(5)]


def test_choice_request_key_differs_by_choices():
    a = ChoiceRequest.of([{"role": "user", "content": "x"}])
    b = ChoiceRequest.of([{"role": "user", "content": "x"}], choices=("1", "2"))
    assert a.key_parts() != b.key_parts()


def test_a_judge_not_answering_with_a_digit_is_a_failure(cache):
    gen = CachedGenerator(Scripted(), cache)  # puts 0.9 of its probability on the digits
    ctx, mat = [{"instruction": "Do X.", "base_query": "X"}], [[("instruction", "Do X.")]]
    assert not isinstance(run_judge(gen, VALIDITY, "logprob", ctx, mat, min_mass=0.5)[0], GenError)
    (failed,) = run_judge(gen, VALIDITY, "logprob", ctx, mat, min_mass=0.95)
    assert isinstance(failed, GenError) and "0.900 of the probability" in failed.reason


class NoLogprobs(Scripted):
    """A server that answers chat but sends no log-probabilities."""

    def choice_probs(self, requests, on_result=None):
        return [GenError("the server returned no logprobs for the first token (does it support logprobs/top_logprobs?)")
                for _ in requests]

    def chat(self, requests, on_result=None):
        return [ChatResult('{"validity": 4, "consistency": 5, "reason": "fine"}',
                           data={"validity": 4, "consistency": 5, "reason": "fine"}) for _ in requests]


def test_auto_judge_falls_back_to_text_without_logprobs(cache):
    gen = CachedGenerator(NoLogprobs(), cache)
    ctx, mat = [{"instruction": "Do X.", "base_query": "X"}], [[("instruction", "Do X.")]]
    (j,) = run_judge(gen, VALIDITY, "auto", ctx, mat)
    assert j.mode == "text" and j.scores == {"validity": 4.0, "consistency": 5.0}
    (err,) = run_judge(gen, VALIDITY, "logprob", ctx, mat)  # asked for logprob explicitly: a failure
    assert isinstance(err, GenError) and "no logprobs" in err.reason


def test_decomposed_rows_pass_through_without_a_model(tmp_path):
    from ontask.tcia.corpus import iter_decomposed

    path = tmp_path / "d.jsonl"
    rows = [{"instruction": "A", "is_complex": True, "languages": ["EN"],
             "tasks": [{"task_type": "T", "base_query": "Q", "constraints": [{"text": "c", "category": "tone and style"}]}]},
            {"task_type": "T2", "base_query": "Q2", "constraints": ["be brief"], "languages": "en"},
            {"instruction": "B", "tasks": "not a list either"}]
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    (chunk,) = list(iter_decomposed(path, None))
    assert chunk[0].result["tasks"][0]["constraints"][0]["category"] == "Style/Tone"
    assert chunk[0].result["languages"] == ["en"]
    assert chunk[1].result["tasks"][0]["constraints"] == [{"text": "be brief", "category": "Content"}]
    assert chunk[1].result["languages"] == ["en"]
    path.write_text(json.dumps(rows[2]) + "\n")
    with pytest.raises(ValueError, match="need decomposing"):  # no decomposition and no model was given
        list(iter_decomposed(path, None))


def test_every_constraint_of_the_answer_schemas_reaches_the_json_schema():
    """A validator placed before a constraint makes pydantic drop it from the JSON schema,
    and the constrained decoder then never enforces it (this happened to `languages`)."""
    schema = Decomposition.model_json_schema()
    assert schema["properties"]["languages"]["items"]["pattern"] == "^[a-z]{2}$"
    assert schema["$defs"]["ConstraintItem"]["properties"]["category"]["enum"][0] == "Content"
    assert Decomposition.model_validate({"is_complex": False, "languages": ["EN-us"], "tasks": [
        {"task_type": "T", "base_query": "Q", "constraints": []}]}).languages == ["en"]

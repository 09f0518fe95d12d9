"""The `vllm:PATH` backend: pure conversions everywhere; engine tests only on a CUDA GPU with vLLM.

The pure tests feed data shaped like vLLM's outputs (`RequestOutput.prompt_logprobs` as a
list of {token id: Logprob}, top log-probs of a sampled token) to the conversion functions;
no vLLM object is imitated. The GPU tests load `ONTASK_VLLM_MODEL` (a local model folder)
and compare with the transformers backend on the same weights.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from pydantic import BaseModel, Field

from ontask.models import load_scorer
from ontask.models.base import PassError, PassRequest, PassResult, Scorer
from ontask.models.vllm.scorer import (
    INSTALL_HINT,
    VLLMScorer,
    VLLMUnavailable,
    pass_outcome,
    scoring_sampling_kwargs,
    vllm_problem,
)
from ontask.models import load_generator
from ontask.models.base import ChatRequest, ChatResult, ChoiceRequest, ChoiceResult, GenError, Usage
from ontask.models.vllm.generator import (
    TOP_LOGPROBS,
    chat_outcome,
    chat_sampling_kwargs,
    choice_outcome,
    choice_sampling_kwargs,
    json_constraint_kwargs,
    structured_api,
    top_logprobs,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAS_CUDA = torch.cuda.is_available()
gpu_only = pytest.mark.skipif(not (HAS_VLLM and HAS_CUDA), reason="needs vLLM and a CUDA GPU")


@dataclasses.dataclass
class Logprob:
    """The fields of vLLM's `Logprob` (vllm/logprobs.py)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class Rating(BaseModel):
    score: int = Field(ge=1, le=5)
    reason: str = Field(max_length=60)


# -- prompt_logprobs -> PassResult -----------------------------------------------------------
PROMPT_LOGPROBS = [
    None,  # the first token has no context
    {5: Logprob(-1.0, 1)},
    {7: Logprob(-0.5, 2), 3: Logprob(-0.1, 1)},  # the token there, plus a top-1 alternative
    {9: Logprob(-0.25, 1)},
]
IDS = [1, 5, 7, 9]


def test_pass_outcome_sums_the_output_positions():
    assert pass_outcome(PROMPT_LOGPROBS, IDS, 2) == PassResult(-0.75, 2, 2)
    assert pass_outcome(PROMPT_LOGPROBS, IDS, 1) == PassResult(-1.75, 3, 1)
    assert pass_outcome(PROMPT_LOGPROBS, IDS, 3, echoed_ids=IDS) == PassResult(-0.25, 1, 3)


def test_pass_outcome_accepts_json_shaped_entries():
    plp = [None, {5: {"logprob": -2.0}}, {7: -0.5}]
    assert pass_outcome(plp, [1, 5, 7], 1) == PassResult(-2.5, 2, 1)


@pytest.mark.parametrize("plp,ids,start,echoed,reason", [
    (None, IDS, 2, None, "no prompt_logprobs"),
    (PROMPT_LOGPROBS[:3], IDS, 2, None, "different tokens"),
    (PROMPT_LOGPROBS, IDS, 2, [1, 5, 7, 8], "different tokens"),
    (PROMPT_LOGPROBS, [1, 5, 8, 9], 2, None, "output token 0"),  # the sent token is missing there
    ([None, {5: Logprob(-1.0)}, {7: Logprob(-math.inf)}], [1, 5, 7], 1, None, "output token 1"),
    ([None, {5: Logprob(-1.0)}, None], [1, 5, 7], 2, None, "output token 0"),
    (PROMPT_LOGPROBS, IDS, 0, None, "no context"),
    (PROMPT_LOGPROBS, IDS, 4, None, "no tokens"),
])
def test_pass_outcome_failures_are_values(plp, ids, start, echoed, reason):
    out = pass_outcome(plp, ids, start, echoed)
    assert isinstance(out, PassError)
    assert reason in out.reason


def test_scoring_sampling_params():
    assert scoring_sampling_kwargs() == {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0, "detokenize": False}


def test_vllm_scorer_tokenises_exactly_like_hf(tiny_scorer):
    """Same prompt/output split as HFScorer (the shared `split_pass`), including its errors."""
    scorer = VLLMScorer(None, tiny_scorer.tokenizer, name="vllm:tiny", identity={"backend": "vllm"},
                        max_length=tiny_scorer.max_length)
    requests = [
        PassRequest("Summarise the notes.\n\nWe met on Monday.", "Budget, hiring, launch."),
        PassRequest("", "An answer to the empty prompt."),
        PassRequest("Écris un haïku 🍂", "Feuilles d'automne\nsur la rivière"),
        PassRequest("No output", ""),
        PassRequest("Too long", "word " * (tiny_scorer.max_length + 5)),
    ]
    assert isinstance(scorer, Scorer)
    for req in requests:
        assert scorer.render_prompt(req.user) == tiny_scorer.render_prompt(req.user)
        assert scorer.encode(req) == tiny_scorer.encode(req)
    assert isinstance(scorer.encode(requests[3]), PassError)
    assert isinstance(scorer.encode(requests[4]), PassError)
    assert scorer.count_tokens("hello world") == tiny_scorer.count_tokens("hello world")


# -- sampling parameters -------------------------------------------------------------------
def test_chat_sampling_params():
    msgs = [{"role": "user", "content": "hi"}]
    assert chat_sampling_kwargs(ChatRequest.of(msgs, max_tokens=100), 100) == {
        "max_tokens": 100, "temperature": 0.0, "skip_special_tokens": True}
    assert chat_sampling_kwargs(ChatRequest.of(msgs, temperature=0.7, seed=3), 40, repetition_penalty=1.2) == {
        "max_tokens": 40, "temperature": 0.7, "skip_special_tokens": True, "seed": 3, "repetition_penalty": 1.2}
    # a grammar bounds JSON answers: no repetition penalty there
    assert chat_sampling_kwargs(ChatRequest.of(msgs, response_model=Rating), 64, repetition_penalty=1.2) == {
        "max_tokens": 64, "temperature": 0.0, "skip_special_tokens": True}
    assert choice_sampling_kwargs() == {"max_tokens": 1, "temperature": 0.0, "logprobs": 20}
    assert TOP_LOGPROBS == 20


@dataclasses.dataclass
class NewParams:  # the fields of vLLM >= 0.11 StructuredOutputsParams that matter here
    json: dict | None = None
    disable_any_whitespace: bool = False


@dataclasses.dataclass
class OldParams:  # an early GuidedDecodingParams, without whitespace control
    json: dict | None = None


def test_structured_api_prefers_the_current_name():
    assert structured_api(SimpleNamespace(StructuredOutputsParams=NewParams, GuidedDecodingParams=OldParams)) == (
        "structured_outputs", NewParams)
    assert structured_api(SimpleNamespace(GuidedDecodingParams=OldParams)) == ("guided_decoding", OldParams)
    assert structured_api(SimpleNamespace()) is None


def test_json_constraint_is_closed_and_compact_where_supported():
    schema = Rating.model_json_schema()
    closed = {**schema, "additionalProperties": False}
    assert json_constraint_kwargs(schema, NewParams) == {"json": closed, "disable_any_whitespace": True}
    assert json_constraint_kwargs(schema, OldParams) == {"json": closed}
    NewParams(**json_constraint_kwargs(schema, NewParams))  # the kwargs fit the class


# -- CompletionOutput -> ChatOutcome -------------------------------------------------------
def test_chat_outcomes():
    msgs = [{"role": "user", "content": "rate it"}]
    structured = ChatRequest.of(msgs, response_model=Rating, max_tokens=64)
    free = ChatRequest.of(msgs, max_tokens=64)

    ok = chat_outcome(structured, '{"score":4,"reason":"good"}', "stop", 10, 9, 64, 2048)
    assert ok == ChatResult('{"score":4,"reason":"good"}', data={"score": 4, "reason": "good"},
                            usage=ok.usage, repaired=False)
    assert (ok.usage.prompt_tokens, ok.usage.completion_tokens) == (10, 9)

    fenced = chat_outcome(structured, '```json\n{"score": 2, "reason": "meh"}\n```', "stop", 10, 20, 64, 2048)
    assert isinstance(fenced, ChatResult) and fenced.repaired and fenced.data == {"score": 2, "reason": "meh"}

    cut = chat_outcome(structured, '{"score":4,"rea', "length", 10, 64, 64, 2048)
    assert isinstance(cut, GenError) and cut.reason.startswith("truncated at max_tokens=64")
    cut_ctx = chat_outcome(structured, '{"score":4,"rea', "length", 2040, 8, 8, 2048)
    assert isinstance(cut_ctx, GenError) and "context limit (2048 tokens, 8 left" in cut_ctx.reason

    invalid = chat_outcome(structured, '{"score":9,"reason":"x"}', "stop", 10, 9, 64, 2048)
    assert isinstance(invalid, GenError) and invalid.reason.startswith("invalid Rating: does not match the schema: score")

    text = chat_outcome(free, "Hello there", "length", 5, 64, 64, 2048)
    assert isinstance(text, ChatResult) and text.truncated and text.text == "Hello there" and text.data is None
    assert chat_outcome(free, "Hello.", "stop", 5, 3, 64, 2048).truncated is False
    assert chat_outcome(free, "  \n", "stop", 5, 2, 64, 2048) == GenError("empty answer", usage=Usage(5, 2))
    aborted = chat_outcome(free, "Hel", "abort", 5, 1, 64, 2048)
    assert isinstance(aborted, GenError) and "finish_reason 'abort'" in aborted.reason


# -- top logprobs -> ChoiceResult ----------------------------------------------------------
def test_choice_probs_renormalise_over_the_choices():
    position = {
        10: Logprob(math.log(0.5), 1, "1"),
        11: Logprob(math.log(0.2), 2, " 2"),  # matched with surrounding whitespace ignored
        12: Logprob(math.log(0.05), 3, "2"),  # a second token for the same choice adds up
        13: Logprob(math.log(0.25), 4, "x"),
    }
    top = top_logprobs(position, decode=lambda t: f"<{t}>")
    assert [t for t, _ in top] == ["1", " 2", "2", "x"]
    out = choice_outcome(("1", "2", "3"), top, n_prompt=7)
    assert isinstance(out, ChoiceResult)
    assert out.mass == pytest.approx(0.75, rel=1e-12)
    assert out.probs == pytest.approx({"1": 2 / 3, "2": 1 / 3, "3": 0.0}, rel=1e-12)
    assert sum(out.probs.values()) == pytest.approx(1.0, rel=1e-12)
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (7, 1)


def test_choice_probs_decode_missing_text_and_fail_as_values():
    top = top_logprobs({3: Logprob(-0.1, 1, None), 4: Logprob(-3.0, 2, None)}, decode=lambda t: {3: "4", 4: "5"}[t])
    assert top == [("4", -0.1), ("5", -3.0)]
    out = choice_outcome(("4", "5"), top, 3)
    assert isinstance(out, ChoiceResult)
    assert out.probs["4"] == pytest.approx(math.exp(-0.1) / (math.exp(-0.1) + math.exp(-3.0)), rel=1e-12)

    none = choice_outcome(("1", "2"), [("yes", -0.1), ("no", -2.0)], 3)
    assert isinstance(none, GenError) and "none of the choices 1, 2" in none.reason and "'yes'" in none.reason
    empty = choice_outcome(("1", "2"), top_logprobs(None, decode=str), 3)
    assert isinstance(empty, GenError) and "no logprobs" in empty.reason


# -- availability --------------------------------------------------------------------------
def test_vllm_problem_messages():
    assert vllm_problem(has_vllm=False, has_cuda=True) == INSTALL_HINT
    assert INSTALL_HINT == "vllm:PATH needs vLLM and a CUDA GPU: pip install 'ontask[vllm]'"
    no_gpu = vllm_problem(has_vllm=True, has_cuda=False)
    assert no_gpu.startswith(INSTALL_HINT) and "no CUDA device" in no_gpu
    assert vllm_problem(has_vllm=True, has_cuda=True) is None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_missing_vllm_is_a_clear_error():
    for load in (load_scorer, load_generator):
        with pytest.raises(VLLMUnavailable) as err:
            load("vllm:/x")
        assert str(err.value) == INSTALL_HINT
        assert isinstance(err.value, RuntimeError) and isinstance(err.value, ImportError)


def test_importing_ontask_never_imports_vllm():
    code = ("import sys, ontask, ontask.models, ontask.models, ontask.models.vllm.scorer, ontask.models.vllm.generator; "
            "sys.exit(1 if 'vllm' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_unknown_model_names_vllm():
    with pytest.raises(ValueError, match="vllm:PATH"):
        load_scorer("llamacpp:/x")
    with pytest.raises(ValueError, match="vllm:PATH"):
        load_generator("llamacpp:/x")


# -- on a GPU ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vllm_model() -> tuple[str, str]:
    path = os.environ.get("ONTASK_VLLM_MODEL")
    if not path:
        pytest.skip("set ONTASK_VLLM_MODEL to a local model folder")
    # float32 by default so that the comparison with the fp32 transformers scorer is tight
    return path, os.environ.get("ONTASK_VLLM_DTYPE", "float32")


# Scorer and generator ask for the same settings, so they share one engine.
ENGINE_OPTIONS = {"gpu_memory_utilization": 0.5}


@gpu_only
def test_vllm_scorer_matches_transformers(vllm_model):
    from ontask.models.hf.scorer import load_hf_scorer

    path, dtype = vllm_model
    scorer = load_scorer(f"vllm:{path}", dtype=dtype, **ENGINE_OPTIONS)
    reference = load_hf_scorer(path)
    requests = [
        PassRequest("Summarise the meeting notes in three bullet points.\n\nWe met on Monday.", "Budget, hiring, launch."),
        PassRequest("", "Three points: budget, hiring, launch."),
        PassRequest("Translate the sentence into French.", "Le temps est beau aujourd'hui."),
        PassRequest("Écris un haïku 🍂", "Feuilles d'automne\nsur la rivière calme"),
        PassRequest("Nothing to say", ""),
    ]
    got, want = scorer.score(requests), reference.score(requests)
    assert isinstance(got[-1], PassError) and isinstance(want[-1], PassError)
    for g, w in zip(got[:-1], want[:-1], strict=True):
        assert isinstance(g, PassResult) and isinstance(w, PassResult)
        assert (g.n_output, g.n_prompt) == (w.n_output, w.n_prompt)
        assert abs(g.sum_logprob - w.sum_logprob) / g.n_output < 1e-2
    assert scorer.describe()["backend"] == "vllm" and scorer.fingerprint != reference.fingerprint


@gpu_only
def test_vllm_generator_structured_and_choices(vllm_model):
    path, dtype = vllm_model
    gen = load_generator(f"vllm:{path}", dtype=dtype, **ENGINE_OPTIONS)
    seen: list[int] = []
    prompts = ["Rate this review from 1 to 5 and say why: 'Great product, works well.'",
               "Rate this review from 1 to 5 and say why: 'Broke after a day.'"]
    requests = [ChatRequest.of([{"role": "user", "content": p}], response_model=Rating, max_tokens=128) for p in prompts]
    requests.append(ChatRequest.of([{"role": "user", "content": "Say hello."}], max_tokens=16))
    results = gen.chat(requests, on_result=lambda i, _: seen.append(i))
    assert sorted(seen) == [0, 1, 2]
    for res in results[:2]:
        assert isinstance(res, ChatResult), res
        Rating.model_validate(res.data)
    assert isinstance(results[2], ChatResult) and results[2].text.strip()

    choices = gen.choice_probs([ChoiceRequest.of([{"role": "user", "content": "Answer with one digit from 1 to 5: how good is 'great'?"}])])
    assert isinstance(choices[0], ChoiceResult), choices[0]
    assert sum(choices[0].probs.values()) == pytest.approx(1.0, abs=1e-9)

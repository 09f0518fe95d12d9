"""The local transformers generator: constrained JSON, batching invariance, choice probabilities, failures as values."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import pytest
import torch
from pydantic import BaseModel, Field

from ontask.models.base import ChatRequest, ChatResult, ChoiceRequest, ChoiceResult, GenError
from ontask.models.hf.generator import HFGenerator, load_hf_generator


class Colour(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Part(BaseModel):
    label: str = Field(max_length=8)
    colour: Colour


class Answer(BaseModel):
    """Nested object ($defs/$ref), enum, int range, bounded string, bounded list."""

    title: str = Field(max_length=12)
    score: int = Field(ge=1, le=5)
    part: Part
    items: list[Annotated[str, Field(max_length=6)]] = Field(max_length=3)


PROMPTS = [
    "Hi",
    "Summarise the meeting notes in three bullet points.",
    "Translate the sentence into French. The weather is nice today, and the river is quiet.",
    "Classify the review as positive or negative: I loved the product!",
    "List the steps to reset a password.",
]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def gen(tiny_dir) -> HFGenerator:
    return load_hf_generator(tiny_dir, batch_size=4)


def test_constrained_answers_of_a_random_model_validate(gen):
    reqs = [ChatRequest.of(user(p), response_model=Answer, max_tokens=300) for p in PROMPTS]
    reqs.append(ChatRequest.of(user(PROMPTS[1]), response_model=Answer, max_tokens=300, temperature=1.0, seed=7))
    outcomes = gen.chat(reqs)
    for out in outcomes:
        assert isinstance(out, ChatResult), out
        assert out.data == Answer.model_validate_json(out.text).model_dump(mode="json")
        assert not out.repaired
        assert out.usage.completion_tokens > 0 and out.usage.prompt_tokens > 0


def test_greedy_answer_does_not_depend_on_the_batch(gen):
    target = ChatRequest.of(user(PROMPTS[3]), max_tokens=24)
    alone = gen.chat([target])[0]
    batch = gen.chat([ChatRequest.of(user(p), max_tokens=24) for p in PROMPTS[:3]] + [target])[3]
    assert isinstance(alone, ChatResult) and isinstance(batch, ChatResult)
    assert alone.text == batch.text

    structured = ChatRequest.of(user(PROMPTS[0]), response_model=Answer, max_tokens=300)
    others = [ChatRequest.of(user(p), response_model=Answer, max_tokens=300) for p in PROMPTS[2:]]
    assert gen.chat([structured])[0] == gen.chat(others + [structured])[-1]


def test_sampling_is_seeded_per_request(gen):
    def sample(seed: int, company: list[str]) -> str:
        reqs = [ChatRequest.of(user(p), max_tokens=16, temperature=1.0, seed=1) for p in company]
        reqs.append(ChatRequest.of(user(PROMPTS[1]), max_tokens=16, temperature=1.0, seed=seed))
        out = gen.chat(reqs)[-1]
        assert isinstance(out, ChatResult)
        return out.text

    assert sample(5, []) == sample(5, PROMPTS[2:])
    assert sample(5, []) != sample(6, [])


def test_choice_probs_equal_a_hand_computation(gen):
    choices = ("1", "2", "3", "4", "5")
    target = ChoiceRequest.of(user("Rate the answer from 1 to 5."), choices)
    others = [ChoiceRequest.of(user(p), choices) for p in PROMPTS]
    outcomes = gen.choice_probs(others[:2] + [target] + others[2:])
    got = outcomes[2]
    assert isinstance(got, ChoiceResult)

    tok, model = gen.tokenizer, gen.model
    ids = tok(gen.render(target.messages), add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    token_ids = []
    for c in choices:
        encoded = tok.encode(c, add_special_tokens=False)
        assert len(encoded) == 1
        token_ids.append(encoded[0])
    raw = [float(probs[t]) for t in token_ids]
    mass = sum(raw)
    assert got.mass == pytest.approx(mass, rel=1e-5)
    for c, p in zip(choices, raw, strict=True):
        assert got.probs[c] == pytest.approx(p / mass, rel=1e-5, abs=1e-7)
    assert got.expected() == pytest.approx(sum(p / mass * int(c) for c, p in zip(choices, raw, strict=True)), rel=1e-5)
    assert got.usage.prompt_tokens == len(ids)
    assert all(isinstance(o, ChoiceResult) for o in outcomes)


def test_choice_that_is_not_one_token_is_rejected_at_call_time(gen):
    with pytest.raises(ValueError, match="not a single token"):
        gen.choice_probs([ChoiceRequest.of(user("Yes or no?"), ("definitely yes", "no"))])


def test_prompt_over_the_context_fails_alone(gen):
    short = HFGenerator(gen.model, gen.tokenizer, name="tiny-short", identity={"model": "tiny"}, max_length=40)
    long_prompt = user(" ".join(PROMPTS))
    outcomes = short.chat([
        ChatRequest.of(user("Hi"), max_tokens=8),
        ChatRequest.of(long_prompt, max_tokens=8),
        ChatRequest.of(user("Hello"), max_tokens=8),
    ])
    assert isinstance(outcomes[1], GenError) and "prompt too long" in outcomes[1].reason
    assert "context is 40 tokens" in outcomes[1].reason
    assert isinstance(outcomes[0], ChatResult) and isinstance(outcomes[2], ChatResult)

    choices = short.choice_probs([ChoiceRequest.of(long_prompt), ChoiceRequest.of(user("Hi"))])
    assert isinstance(choices[0], GenError) and isinstance(choices[1], ChoiceResult)


def test_answer_cut_off_by_max_tokens_is_an_error(gen):
    out = gen.chat([ChatRequest.of(user("Hi"), response_model=Answer, max_tokens=6)])[0]
    assert isinstance(out, GenError)
    assert out.reason.startswith("truncated at max_tokens=6: ")
    assert out.usage.completion_tokens == 6


def test_on_result_fires_once_per_request_with_the_returned_outcome(gen):
    reqs = [
        ChatRequest.of(user(PROMPTS[0]), response_model=Answer, max_tokens=300),
        ChatRequest.of(user(PROMPTS[1]), max_tokens=8),
        ChatRequest.of(user(PROMPTS[2]), response_model=Answer, max_tokens=4),
        ChatRequest.of(user(PROMPTS[3]), max_tokens=8, temperature=0.7, seed=2),
        ChatRequest.of(user(PROMPTS[4] * 200), max_tokens=8),  # over the tiny model's 2048-token context
    ]
    seen: list[tuple[int, object]] = []
    outcomes = gen.chat(reqs, on_result=lambda i, o: seen.append((i, o)))
    assert sorted(i for i, _ in seen) == list(range(len(reqs)))
    assert all(outcomes[i] is o for i, o in seen)
    assert isinstance(outcomes[4], GenError)

    seen.clear()
    choice_reqs = [ChoiceRequest.of(user(p)) for p in PROMPTS]
    choice_outcomes = gen.choice_probs(choice_reqs, on_result=lambda i, o: seen.append((i, o)))
    assert sorted(i for i, _ in seen) == list(range(len(choice_reqs)))
    assert all(choice_outcomes[i] is o for i, o in seen)


def test_identity(gen, tiny_dir):
    again = load_hf_generator(tiny_dir)
    assert again.fingerprint == gen.fingerprint
    assert gen.supports_choice_probs
    described = gen.describe()
    assert described["name"] == f"hf:{tiny_dir}" and "llguidance" in described["decoding"]


class SubTask(BaseModel):
    instruction: str = Field(max_length=80)
    kind: Annotated[str, Field(pattern="^(constraint|topic|format)$")]


class Decomposition(BaseModel):
    task: str = Field(max_length=80)
    constraints: list[SubTask] = Field(min_length=1, max_length=3)


@pytest.mark.slow
def test_embedded_model_decomposes_into_a_valid_object():
    from ontask.models.embedded.weights import load_embedded_generator

    gen = load_embedded_generator()
    assert gen.name == "embedded" and "gguf_sha256" in gen.describe()
    prompt = (
        "Split this instruction into its task and its constraints, as JSON: "
        "'Write a haiku about autumn leaves, in French, without the letter e.'"
    )
    out = gen.chat([ChatRequest.of(user(prompt), response_model=Decomposition, max_tokens=200)])[0]
    assert isinstance(out, ChatResult), out
    assert out.data == Decomposition.model_validate_json(out.text).model_dump(mode="json")

"""Decoding on the fused forward (`models/hf/decode.py`) is transformers' greedy loop: the
same answers as `generate` for plain, penalised, sampled and JSON-constrained requests over
left-padded batches, and step by step the logits of the model's own forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from ontask.models.base import ChatRequest
from ontask.models.hf.generator import load_hf_generator

from test_hf_generator import PROMPTS, Answer, user


def _requests() -> list[ChatRequest]:
    plain = [ChatRequest.of(user(p), max_tokens=24) for p in PROMPTS]
    sampled = [ChatRequest.of(user(p), max_tokens=16, temperature=1.0, seed=3 + i) for i, p in enumerate(PROMPTS[:3])]
    structured = [ChatRequest.of(user(p), response_model=Answer, max_tokens=300) for p in PROMPTS[1:4]]
    return plain + sampled + structured


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request, tiny_dir, qwen_dir):
    return tiny_dir if request.param == "llama" else qwen_dir


def _family(model_dir) -> str:
    import json

    return json.loads((model_dir / "config.json").read_text())["model_type"]


@pytest.mark.parametrize("gemm", ["default", "onednn"])
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_fused_decoding_answers_as_generate_does(model_dir, gemm, penalty):
    fused = load_hf_generator(model_dir, batch_size=4, kernels="fused", gemm=gemm, repetition_penalty=penalty)
    eager = load_hf_generator(model_dir, batch_size=4, kernels="eager", repetition_penalty=penalty)
    assert fused._decoder is not None and eager._decoder is None
    reqs = _requests()
    got, want = fused.chat(reqs), eager.chat(reqs)
    assert got == want
    # the set exercises what it claims to: answers that stop early, JSON objects (the random
    # Qwen2 runs out of tokens on them, equally in both), samples
    assert sum(getattr(r, "data", None) is not None for r in got) == (3 if _family(model_dir) == "llama" else 0)
    assert len({r.usage.completion_tokens for r in got}) > 2


class _Record(LogitsProcessor):
    """Keeps each step's scores, unchanged."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.steps.append(scores.clone())
        return scores


def test_each_step_gives_the_logits_of_the_models_own_forward(model_dir):
    gen = load_hf_generator(model_dir, kernels="fused", gemm="default")
    prompts = [gen.encode(gen.render(user(p))) for p in PROMPTS]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), gen._pad_id)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    record = _Record()
    out = gen._decoder.generate(ids, mask, max_new_tokens=12, processors=LogitsProcessorList([record]),
                                stop_ids=(), pad_id=gen._pad_id)
    assert out.shape == (len(prompts), width + 12) and torch.equal(out[:, :width], ids)

    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    full = torch.cat([mask, torch.ones(len(prompts), 12, dtype=torch.long)], dim=1)
    positions = (full.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = reference(input_ids=out, attention_mask=full, position_ids=positions).logits
    for step, scores in enumerate(record.steps):
        want = logits[:, width + step - 1]
        assert torch.allclose(scores.double(), want, atol=1e-4), (step, (scores.double() - want).abs().max())
        assert torch.equal(out[:, width + step], scores.argmax(dim=-1))  # greedy: each token is the argmax


def test_questions_on_one_item_run_its_shared_part_once_and_match_eager(tiny_dir, monkeypatch):
    """A judge's prompts on one item (item first, question last) are batched together and
    their common prefix runs once; the probabilities are transformers' to float32 rounding."""
    import ontask.models.hf.generator as hg
    from ontask.models.base import ChoiceRequest

    monkeypatch.setattr(hg, "MIN_SHARED_PREFIX", 4)  # the tiny template's items are short
    items = ["The parcel arrived late and the box was torn open on one side.",
             "Summarise the meeting notes in three bullet points for the team.",
             "Hi"]
    questions = ["Rate its quality.", "Rate its honesty, please.", "Rate it."]
    reqs = [ChoiceRequest.of(user(f"<item>\n{item}\n</item>\n{q}\nScore (1-5):")) for item in items for q in questions]
    fused = load_hf_generator(tiny_dir, batch_size=16, kernels="fused")
    eager = load_hf_generator(tiny_dir, batch_size=16, kernels="eager")
    plan = fused.plan(reqs)
    assert sorted(sorted(b) for b in plan) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # one batch per item
    got, want = fused.choice_probs(reqs), eager.choice_probs(reqs)
    for a, b in zip(got, want, strict=True):
        assert a.probs.keys() == b.probs.keys()
        assert max(abs(a.probs[k] - b.probs[k]) for k in a.probs) < 1e-6 and abs(a.mass - b.mass) < 1e-6


def test_batches_of_few_rows_decode_on_their_own_path_with_the_same_answers(model_dir):
    from ontask.models.hf.decode import FEW_ROWS
    from ontask.models.hf.gemm import pick_gemm

    gen = load_hf_generator(model_dir, batch_size=16, kernels="fused")  # gemm auto
    eager = load_hf_generator(model_dir, batch_size=16, kernels="eager")
    if pick_gemm() == "default" and pick_gemm(decoding=True) == "onednn":  # Intel with oneDNN: two paths
        assert {k: body.gemm for k, (body, _) in gen._decoder.paths.items()} == {False: "onednn", True: "default"}
    for n in (1, FEW_ROWS, FEW_ROWS + 2):
        reqs = [ChatRequest.of(user(p), max_tokens=20) for p in PROMPTS[:n]]
        assert gen.chat(reqs) == eager.chat(reqs)

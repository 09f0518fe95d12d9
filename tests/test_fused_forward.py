"""The fused CPU forward (`kernels: auto|fused`) computes what transformers' forward does:
every pass's summed log-prob against a float64 copy of the model, on Llama and on Qwen2
(q/k/v biases, permuted with their rows), each GEMM path, with and without a shared prefix."""

from __future__ import annotations

import pytest
import torch

from ontask.models.base import PassRequest
from ontask.models.hf.scorer import HFScorer

REQUESTS = [
    PassRequest("Summarise the meeting notes in three bullet points.\n\nWe met on Monday.", "Three points: budget, hiring, launch."),
    PassRequest("Summarise the meeting notes in three bullet points.\n\nShort one.", "Budget."),
    PassRequest("", "Three points: budget, hiring, launch."),
    PassRequest("Translate the sentence into French.", "Le temps est beau aujourd'hui."),
    PassRequest("Écris un haïku 🍂", "Feuilles d'automne\nsur la rivière calme"),
]


def _reference(model, tokenizer, scorer: HFScorer, req: PassRequest) -> float:
    """Summed log-prob of the output tokens under a float64 copy of the model."""
    ids, start = scorer.encode(req)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    lp = torch.log_softmax(logits, dim=-1)
    return sum(lp[i - 1, ids[i]].item() for i in range(start, len(ids)))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("gemm", ["default", "onednn"])
@pytest.mark.parametrize("share_prefix", [False, True])
def test_fused_forward_matches_a_float64_reference(family, gemm, share_prefix, tiny_dir, qwen_dir, monkeypatch):
    import copy

    import ontask.models.hf.scorer as hf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setattr(hf, "MIN_SHARED_PREFIX", 2)  # the chat header of the tiny template is short
    path = tiny_dir if family == "llama" else qwen_dir
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    scorer = HFScorer(model, tok, name="t", identity={}, batch_tokens=4096, share_prefix=share_prefix,
                      kernels="fused", gemm=gemm)
    assert scorer.describe()["kernels"] == f"fused (gemm {gemm})"
    results = scorer.score(REQUESTS)
    double = copy.deepcopy(model).double()
    for req, res in zip(REQUESTS, results):
        assert res.sum_logprob == pytest.approx(_reference(double, tok, scorer, req), abs=1e-5)
    again = scorer.score(REQUESTS)  # a rerun computes the same floats, bit for bit
    assert [r.sum_logprob for r in again] == [r.sum_logprob for r in results]


def test_fused_and_eager_agree_to_float32_rounding(tiny_scorer):
    fused = HFScorer(tiny_scorer.model, tiny_scorer.tokenizer, name="t", identity={}, kernels="auto")
    eager = HFScorer(tiny_scorer.model, tiny_scorer.tokenizer, name="t", identity={}, kernels="eager")
    assert fused.describe()["kernels"].startswith("fused")
    assert eager.describe()["kernels"] == "eager (transformers)"
    assert fused.fingerprint == eager.fingerprint  # same numbers to fp32 rounding: one cache
    for a, b in zip(fused.score(REQUESTS), eager.score(REQUESTS)):
        assert a.n_output == b.n_output
        assert a.sum_logprob == pytest.approx(b.sum_logprob, abs=1e-5)


def test_fused_is_refused_where_it_does_not_apply_and_auto_falls_back(tiny_scorer):
    from transformers import LlamaConfig, LlamaForCausalLM

    gelu = LlamaForCausalLM(LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, hidden_act="gelu")).eval()
    with pytest.raises(ValueError, match="kernels fused: not for this model: activation gelu"):
        HFScorer(gelu, tiny_scorer.tokenizer, name="t", identity={}, kernels="fused")
    auto = HFScorer(gelu, tiny_scorer.tokenizer, name="t", identity={}, kernels="auto")
    assert auto.describe()["kernels"] == "eager (transformers; fused does not apply: activation gelu)"
    with pytest.raises(ValueError, match="unknown kernels 'fast'"):
        HFScorer(gelu, tiny_scorer.tokenizer, name="t", identity={}, kernels="fast")


def test_kernels_and_gemm_are_checked_spec_options():
    from ontask.models.spec import ModelSpec

    assert ModelSpec(spec="embedded", kernels="eager", gemm="onednn").options() == {"kernels": "eager", "gemm": "onednn"}
    with pytest.raises(ValueError, match="kernels"):
        ModelSpec(spec="embedded", kernels="fast")


def test_choice_probabilities_through_the_fused_forward_match_eager(tiny_scorer):
    """The generator's choice_probs (the judges' one forward pass) runs the fused forward on
    the CPU: next-token probabilities agree with transformers' forward to float32 rounding,
    and the scorer and generator of one model share one fused copy of the weights per GEMM path."""
    from ontask.models.hf.generator import HFGenerator

    model, tok = tiny_scorer.model, tiny_scorer.tokenizer
    fused = HFGenerator(model, tok, name="t", identity={}, kernels="auto")
    eager = HFGenerator(model, tok, name="t", identity={}, kernels="eager")
    assert fused.describe()["kernels"].startswith("fused") and eager.describe()["kernels"].startswith("eager")
    path = fused._fused.gemm
    assert fused._fused is HFScorer(model, tok, name="t", identity={}, gemm=path)._fused  # one copy per path
    seqs = [tok(f"<|im_start|>user\nRate answer {i} from one to five, please.<|im_end|>\n" * (i + 1))["input_ids"]
            for i in range(4)]  # different lengths: right padding, each row's own last position
    a, b = fused._next_token_probs(seqs), eager._next_token_probs(seqs)
    assert a.shape == b.shape and a.shape[0] == 4
    assert float((a - b).abs().max()) < 1e-6 and float((a.sum(-1) - 1).abs().max()) < 1e-5

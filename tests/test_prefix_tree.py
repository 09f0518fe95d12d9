"""Shared prefixes computed once (`prefixes.tree`, the fused scorer's plan): which prefixes
are shared, and that passes continuing prefixes computed in earlier batches score what
they score alone, against a float64 reference."""

from __future__ import annotations

import copy

import pytest
import torch

from ontask.models.base import PassRequest
from ontask.models.hf.prefixes import tree
from ontask.models.hf.scorer import HFScorer

HEADER = [1, 2, 3, 4]


def test_tree_finds_each_shared_prefix_and_its_parent():
    seqs = [
        HEADER + [10, 11, 12, 50, 51],  # instruction A, input x
        HEADER + [10, 11, 12, 60],      # instruction A, input y
        HEADER + [20, 21, 70, 71],      # instruction B
        HEADER + [20, 21, 80],          # instruction B
        HEADER + [30, 90],              # alone after the header
        [9, 9, 9, 9, 9],                # shares nothing
    ]
    t = tree(seqs, [len(s) - 1 for s in seqs], minimum=2)
    assert t.nodes == [tuple(HEADER), tuple(HEADER + [20, 21]), tuple(HEADER + [10, 11, 12])]
    assert t.parent == [-1, 0, 0]
    assert t.node_of == [2, 2, 1, 1, 0, -1]
    assert t.start(2) == 7 and t.start(-1) == 0
    # tokens run: each node's own part once, each pass after its node
    assert t.tokens_run(seqs) == 4 + 2 + 3 + (2 + 1 + 2 + 1 + 2 + 5)


def test_tree_respects_limits_and_drops_prefixes_with_one_user():
    seqs = [HEADER + [10, 11, 12, 13], HEADER + [10, 11, 12, 14], HEADER + [40]]
    # the first row may skip only 5 tokens (its output starts early): rows 0 and 1 share
    # the header + [10]; header + [10, 11, 12] would serve row 1 alone and is not kept
    t = tree(seqs, [5, 7, 4], minimum=2)
    assert t.nodes == [tuple(HEADER), tuple(HEADER + [10])] and t.parent == [-1, 0]
    assert t.node_of == [1, 1, 0]
    # a row alone after the header: the header has one user and is not kept
    assert tree(seqs[:2] + [[7, 7, 7]], [5, 7, 2], minimum=2).nodes == [tuple(HEADER + [10])]
    # below the minimum nothing is shared
    assert tree(seqs, [7, 7, 4], minimum=9).nodes == []


REQUESTS = [
    PassRequest("Summarise the meeting notes in three bullet points.\n\nWe met on Monday.", "Budget, hiring, launch."),
    PassRequest("Summarise the meeting notes in three bullet points.\n\nShort one.", "Budget."),
    PassRequest("Summarise the meeting notes in three bullet points.\n\nWe met on Monday and talked a lot.",
                "Three points: budget, hiring, launch, and a longer answer than the others."),
    PassRequest("Translate the sentence into French.\n\nThe weather is nice.", "Le temps est beau."),
    PassRequest("Translate the sentence into French.\n\nGood morning.", "Bonjour."),
    PassRequest("", "Three points: budget, hiring, launch."),
    PassRequest("Écris un haïku 🍂", "Feuilles d'automne\nsur la rivière calme"),
]


@pytest.mark.parametrize("batch_tokens", [64, 4096])
def test_passes_from_shared_prefixes_match_float64_and_scoring_alone(tiny_scorer, batch_tokens, monkeypatch):
    import ontask.models.hf.scorer as hf

    monkeypatch.setattr(hf, "MIN_SHARED_PREFIX", 2)  # the tiny template's header is short
    model, tok = tiny_scorer.model, tiny_scorer.tokenizer
    scorer = HFScorer(model, tok, name="t", identity={}, batch_tokens=batch_tokens, kernels="fused")
    encoded = [scorer.encode(r) for r in REQUESTS]
    t = tree([ids for ids, _ in encoded], [s - 1 for _, s in encoded], 2)
    assert len(t.nodes) >= 3 and any(p >= 0 for p in t.parent)  # header, then instructions under it
    results = scorer.score(REQUESTS)
    alone = [scorer.score([r])[0] for r in REQUESTS]
    double = copy.deepcopy(model).double()
    for (ids, start), res, one in zip(encoded, results, alone):
        with torch.no_grad():
            lp = torch.log_softmax(double(torch.tensor([ids])).logits[0], dim=-1)
        want = sum(lp[i - 1, ids[i]].item() for i in range(start, len(ids)))
        assert res.n_output == len(ids) - start
        assert res.sum_logprob == pytest.approx(want, abs=1e-5)
        assert res.sum_logprob == pytest.approx(one.sum_logprob, abs=1e-5)
    assert [r.sum_logprob for r in scorer.score(REQUESTS)] == [r.sum_logprob for r in results]  # bit for bit
    assert scorer.stats["passes"] == 3 * len(REQUESTS) and scorer._head_out is None  # the head's buffer is let go


def test_plan_is_the_same_for_the_passes_a_resumed_call_gets(tiny_scorer, monkeypatch):
    """Batches are committed in order; a resumed call gets the passes of the batches not yet
    committed and must plan exactly those batches again (the same floats, bit for bit)."""
    import ontask.models.hf.scorer as hf

    monkeypatch.setattr(hf, "MIN_SHARED_PREFIX", 2)
    scorer = HFScorer(tiny_scorer.model, tiny_scorer.tokenizer, name="t", identity={}, batch_tokens=160,
                      kernels="fused")
    requests = REQUESTS * 3 + [PassRequest(r.user + " Again.", r.output) for r in REQUESTS]
    encoded = [(i, *scorer.encode(r)) for i, r in enumerate(requests)]
    plan = [[i for i, _, _ in batch] for batch in scorer._fused_plan(encoded)]
    assert len(plan) >= 4 and sorted(i for b in plan for i in b) == list(range(len(requests)))
    # passes sharing an instruction share a batch, and the batch runs fewer tokens than its passes hold
    shared = [b for b in plan if hf._distinct_tokens([encoded[i] for i in b]) < sum(len(encoded[i][1]) for i in b)]
    assert shared
    for done in range(1, len(plan)):
        left = [encoded[i] for b in plan[done:] for i in b]
        assert [[i for i, _, _ in batch] for batch in scorer._fused_plan(left)] == plan[done:]
    scored = scorer.score(requests)
    left = [requests[i] for b in plan[2:] for i in b]
    again = scorer.score(left)
    assert [r.sum_logprob for r in again] == [scored[i].sum_logprob for b in plan[2:] for i in b]

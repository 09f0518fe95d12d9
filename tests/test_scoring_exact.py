"""Every score equals a hand computation: explicit forward + log_softmax + gather."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ontask.models.base import PassRequest, PassResult, build_user_turn
from ontask.models.hf.scorer import HFScorer
from ontask.scoring import ScoreConfig, run_score
from ontask.scoring import scores as S
from ontask.scoring.alternatives import InstructionPool, random_alternatives

REQUESTS = [
    PassRequest("Summarise the meeting notes in three bullet points.\n\nWe met on Monday.", "Three points: budget, hiring, launch."),
    PassRequest("Summarise the meeting notes in three bullet points.\n\nShort one.", "Budget."),
    PassRequest("Summarise the meeting notes in three bullet points, friendly tone.", "Hi! Budget, hiring and launch."),
    PassRequest("", "Three points: budget, hiring, launch."),
    PassRequest("Translate the sentence into French.", "Le temps est beau aujourd'hui."),
    PassRequest("Écris un haïku 🍂", "Feuilles d'automne\nsur la rivière calme"),
]


def hand_logprob(scorer: HFScorer, req: PassRequest, model=None) -> tuple[float, int]:
    """Reference: one full forward of prompt+output (by `model`, else the scorer's),
    log_softmax in float64, gather."""
    tok, model = scorer.tokenizer, model if model is not None else scorer.model
    prompt = tok.apply_chat_template([{"role": "user", "content": req.user}], tokenize=False, add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(prompt + req.output, add_special_tokens=False)["input_ids"]
    assert full[: len(p_ids)] == p_ids
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    return sum(lp[i - 1, full[i]].item() for i in range(len(p_ids), len(full))), len(full) - len(p_ids)


@pytest.mark.parametrize("batch_tokens,share_prefix", [(64, False), (4096, False), (4096, True)])
def test_pass_logprobs_match_hand_computation(tiny_dir, tiny_scorer, batch_tokens, share_prefix, monkeypatch):
    import ontask.models.hf.scorer as hf

    monkeypatch.setattr(hf, "MIN_SHARED_PREFIX", 2)  # exercise the shared-prefix path on short prompts
    scorer = HFScorer(tiny_scorer.model, tiny_scorer.tokenizer, name="t", identity={}, batch_tokens=batch_tokens, share_prefix=share_prefix)
    results = scorer.score(REQUESTS)
    for req, res in zip(REQUESTS, results):
        want, n = hand_logprob(scorer, req)
        assert isinstance(res, PassResult)
        assert res.n_output == n
        assert res.sum_logprob == pytest.approx(want, abs=1e-5)


def test_batches_are_length_sorted_and_within_budget(tiny_scorer):
    scorer = HFScorer(tiny_scorer.model, tiny_scorer.tokenizer, name="t", identity={}, batch_tokens=120)
    enc = [(i, *scorer.encode(r)) for i, r in enumerate(REQUESTS)]
    batches = list(scorer._plan_batches(enc))
    lengths = [len(ids) for b in batches for _, ids, _ in b]
    assert lengths == sorted(lengths, reverse=True)
    for b in batches:
        assert len(b) == 1 or len(b[0][1]) * len(b) <= 120
    assert sorted(i for b in batches for i, _, _ in b) == list(range(len(REQUESTS)))


def test_empty_and_too_long_outputs_are_errors_not_numbers(tiny_scorer):
    res = tiny_scorer.score([PassRequest("x", ""), PassRequest("x", "word " * 5000), REQUESTS[0]])
    assert "no tokens" in res[0].reason
    assert "too long" in res[1].reason
    assert isinstance(res[2], PassResult)


def test_score_formulas_by_hand():
    assert S.perplexity(-2.0) == pytest.approx(math.exp(2.0))
    assert S.ifd(-1.5, -3.0) == pytest.approx(0.5)
    assert S.ifd_ppl(-1.5, -3.0) == pytest.approx(math.exp(-1.5))
    alts = [-2.0, -3.0, -4.0]
    lme = math.log((math.exp(-2) + math.exp(-3) + math.exp(-4)) / 3)
    assert S.tss(-1.0, alts) == pytest.approx(-1.0 - lme)
    assert S.tss(-1.0, alts, "mean") == pytest.approx(2.0)
    assert S.tss(-1.0, alts, "max") == pytest.approx(1.0)
    st = S.RunningStats()
    for x in (1.0, 2.0, 3.0, 4.0):
        st.add(x)
    assert st.mean == pytest.approx(2.5) and st.std == pytest.approx(math.sqrt(1.25))
    assert st.z(4.0) == pytest.approx(1.5 / math.sqrt(1.25))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


ROWS = [
    {"instruction": "Summarise the meeting notes in three bullet points.", "input": "We met on Monday about the budget.", "output": "Budget, hiring, launch."},
    {"instruction": "Translate the sentence into French.", "input": "The weather is nice today.", "output": "Il fait beau aujourd'hui."},
    {"instruction": "Classify the review as positive or negative.", "input": "I loved the product!", "output": "positive"},
    {"instruction": "Write a haiku about autumn leaves.", "input": "", "output": "Leaves fall\non the quiet river"},
    {"instruction": "List the steps to reset a password.", "input": "", "output": "1. Open settings 2. Click reset"},
]


def test_every_row_score_equals_hand_computation(tmp_path, tiny_dir, tiny_scorer, cache):
    src = tmp_path / "in.jsonl"
    _write(src, ROWS)
    cfg = ScoreConfig(scorer=f"hf:{tiny_dir}", metrics=["ppl", "ifd", "ifd_ppl", "tss"], k=2, seed=7)
    manifest = run_score(src, tmp_path / "out", cfg, scorer=tiny_scorer, cache=cache)
    out = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    assert len(out) == len(ROWS) and manifest["counts"]["rows_scored"] == len(ROWS)
    pool = InstructionPool(r["instruction"] for r in ROWS)
    for seq, (row, got) in enumerate(zip(ROWS, out)):
        assert {k: got[k] for k in row} == row  # input fields kept verbatim
        s, n = hand_logprob(tiny_scorer, PassRequest(build_user_turn(row["instruction"], row["input"]), row["output"]))
        lp = s / n
        s0, n0 = hand_logprob(tiny_scorer, PassRequest("", row["output"]))
        lp0 = s0 / n0
        alts = [pool.texts[i] for i in random_alternatives(len(pool), pool.index[row["instruction"]], 2, 7, seq)]
        alt_lps = []
        for a in alts:
            sa, na = hand_logprob(tiny_scorer, PassRequest(build_user_turn(a, row["input"]), row["output"]))
            alt_lps.append(sa / na)
        assert got["lp"] == pytest.approx(lp, abs=1e-5)
        assert got["ppl"] == pytest.approx(math.exp(-lp), rel=1e-5)
        assert got["ifd"] == pytest.approx(lp / lp0, abs=1e-5)
        assert got["ifd_ppl"] == pytest.approx(math.exp(lp0 - lp), rel=1e-5)
        want_tss = lp - math.log(sum(math.exp(x) for x in alt_lps) / len(alt_lps))
        assert got["tss"] == pytest.approx(want_tss, abs=1e-5)
        assert got["tss_top_alt"] == alts[max(range(2), key=lambda i: alt_lps[i])]


class HandEmbedder:  # deterministic vectors: hard neighbours are chosen by these
    name = "hand"

    def embed(self, texts):
        import numpy as np

        rng = np.random.default_rng(0)
        v = rng.normal(size=(len(texts), 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_tss_pp_is_z_scored_hard_tss_plus_lambda_quality(tmp_path, tiny_dir, tiny_scorer, cache):
    import numpy as np

    src = tmp_path / "in.jsonl"
    _write(src, ROWS)
    cfg = ScoreConfig(scorer="t", metrics=["tss", "tss++"], alternatives="random", k=2, lam=0.3, quality="lp",
                      hard_pick="embedding")  # the previous definition, still a setting
    run_score(src, tmp_path / "out", cfg, scorer=tiny_scorer, cache=cache, embedder=HandEmbedder())
    out = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    hard, q = np.array([r["tss_hard"] for r in out]), np.array([r["lp"] for r in out])
    z = lambda a: (a - a.mean()) / a.std()  # noqa: E731
    np.testing.assert_allclose([r["tss_pp"] for r in out], z(hard) + 0.3 * z(q), atol=1e-9)


def test_tss_pp_default_is_tss_against_the_most_likely_of_the_nearest(tmp_path, tiny_dir, tiny_scorer, cache):
    """The default TSS++, by hand: the pool's nearest instructions by cosine (the hand
    embedder's vectors), each scored, the k under which the output is most likely kept,
    TSS against them (log-mean-exp), z-scored over the rows; no quality term."""
    import numpy as np

    src = tmp_path / "in.jsonl"
    _write(src, ROWS)
    cfg = ScoreConfig(scorer="t", metrics=["tss++"], k=2, hard_pool=3)
    manifest = run_score(src, tmp_path / "out", cfg, scorer=tiny_scorer, cache=cache, embedder=HandEmbedder())
    assert manifest["tss_pp_definition"]["definition"] == (
        "z(TSS against the 2 most likely of the 3 nearest instructions (embedding)), no quality term")
    out = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    pool = InstructionPool(r["instruction"] for r in ROWS)
    emb = HandEmbedder().embed(pool.texts)
    want = []
    for row in ROWS:
        i = pool.index[row["instruction"]]
        sims = emb @ emb[i]
        near = sorted((j for j in range(len(pool)) if j != i and sims[j] < 0.95), key=lambda j: (-sims[j], j))[:3]
        s, n = hand_logprob(tiny_scorer, PassRequest(build_user_turn(row["instruction"], row["input"]), row["output"]))
        lps = []
        for j in near:
            sa, na = hand_logprob(tiny_scorer, PassRequest(build_user_turn(pool.texts[j], row["input"]), row["output"]))
            lps.append(sa / na)
        top = sorted(lps, reverse=True)[:2]
        want.append(s / n - math.log(sum(math.exp(x) for x in top) / 2))
    got = np.array([r["tss_hard"] for r in out])
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose([r["tss_pp"] for r in out], (got - got.mean()) / got.std(), atol=1e-9)


def test_shared_passes_are_computed_once(tmp_path, tiny_dir, tiny_scorer, cache):
    """Rows with the same output share the empty pass; a second run computes nothing."""
    rows = [dict(ROWS[0], instruction=f"Summarise the notes, variant {i}.") for i in range(4)]
    src = tmp_path / "in.jsonl"
    _write(src, rows)
    cfg = ScoreConfig(scorer="t", metrics=["ppl", "ifd", "tss"], k=2)
    m1 = run_score(src, tmp_path / "a", cfg, scorer=tiny_scorer, cache=cache)
    # 4 true passes + 1 shared empty pass; alternatives are other rows' true passes.
    assert m1["counts"]["passes_computed"] == 5
    m2 = run_score(src, tmp_path / "b", cfg, scorer=tiny_scorer, cache=cache)
    assert m2["counts"]["passes_computed"] == 0 and m2["counts"]["passes_cached"] == 5
    assert (tmp_path / "a" / "data.jsonl").read_bytes() == (tmp_path / "b" / "data.jsonl").read_bytes()


def test_cache_key_changes_with_model_identity(tiny_dir, tiny_scorer):
    from ontask.scoring.plan import pass_key

    other = HFScorer(tiny_scorer.model, tiny_scorer.tokenizer, name="t", identity={"model": "other"})
    same = HFScorer(tiny_scorer.model, tiny_scorer.tokenizer, name="t", identity={"model": "other"})
    req = REQUESTS[0]
    assert pass_key(other.fingerprint, req) == pass_key(same.fingerprint, req)
    assert pass_key(other.fingerprint, req) != pass_key(tiny_scorer.fingerprint, req)
    assert pass_key(other.fingerprint, req) != pass_key(other.fingerprint, PassRequest(req.user, req.output + " "))


@pytest.mark.slow
def test_smollm2_batched_matches_a_float64_reference(smol_scorer):
    """Within float32's rounding of float64 on each pass's sum (71-110 tokens): what 'exact'
    means here. The noise is the body's float32 arithmetic, ~6e-6 x sqrt(tokens) per pass
    (72 Self-Instruct passes, every batch plan alike; transformers' own forward too), so a
    100-token sum is off by ~6e-5 and, at two sigma, 1.2e-4: the bound is 1.5e-4 per pass
    and 6e-5 for the root mean square over the passes. A wrong mask or position is off by
    far more (1e-2 and up)."""
    import copy
    from importlib.resources import files

    rows = [json.loads(l) for l in (files("ontask") / "data" / "sample_support.jsonl").read_text().splitlines()[:6]]
    reqs = [PassRequest(build_user_turn(r["instruction"], r["input"]), r["output"]) for r in rows]
    reqs += [PassRequest("", rows[0]["output"]), PassRequest(build_user_turn(rows[1]["instruction"], rows[0]["input"]), rows[0]["output"])]
    batched = smol_scorer.score(reqs)
    assert smol_scorer.stats["batches"] >= 1
    double = copy.deepcopy(smol_scorer.model).double()
    errors = []
    for req, res in zip(reqs, batched):
        want, n = hand_logprob(smol_scorer, req, model=double)
        assert res.n_output == n
        assert res.sum_logprob == pytest.approx(want, abs=1.5e-4)  # summed over all output tokens
        errors.append(res.sum_logprob - want)
    assert (sum(e * e for e in errors) / len(errors)) ** 0.5 < 6e-5

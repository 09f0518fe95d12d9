"""Where ontask keeps things on the user's machine (model conversions, the result cache)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """`$ONTASK_CACHE_DIR`, else `$XDG_CACHE_HOME/ontask`, else `~/.cache/ontask`."""
    if env := os.environ.get("ONTASK_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ontask"

"""A content-addressed store of model results in SQLite (WAL mode).

Keys are hashes of everything that changes a result (cache format version, the kind of
result, the model's fingerprint, which already covers weights, chat template and
settings, and the exact inputs), so a changed model or template can never hit a stale
entry, and equal work in any later stage or run is never paid for twice. Values are
bytes (JSON for small records, raw float32 for embeddings).

WAL lets readers proceed while a writer commits; each batch of results is committed in
one transaction, which is what makes `kill -9` safe: a result is either fully stored or
absent.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..paths import user_cache_dir

CACHE_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    value BLOB NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def default_cache_path() -> Path:
    return user_cache_dir() / "cache.sqlite"


def cache_key(kind: str, *parts: Any) -> str:
    """Hash of (format version, kind, parts). Parts must be JSON-serialisable."""
    blob = json.dumps([CACHE_VERSION, kind, *parts], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResultCache:
    """get_many / put_many over a SQLite file; counts hits, misses and writes."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        row = self._conn.execute("SELECT value FROM meta WHERE name='version'").fetchone()
        if row is None:
            self._conn.execute("INSERT INTO meta VALUES ('version', ?)", (str(CACHE_VERSION),))
            self._conn.commit()
        elif int(row[0]) != CACHE_VERSION:
            raise RuntimeError(
                f"{self.path}: cache format {row[0]} but this ontask writes {CACHE_VERSION}; "
                "point --cache at a new file"
            )
        self.hits = self.misses = self.writes = 0

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for a in range(0, len(unique), 500):  # SQLite's bound-parameter limit
                part = unique[a : a + 500]
                q = f"SELECT key, value FROM results WHERE key IN ({','.join('?' * len(part))})"
                found.update(self._conn.execute(q, part).fetchall())
        self.hits += len(found)
        self.misses += len(unique) - len(found)
        return found

    def put_many(self, kind: str, items: Iterable[tuple[str, bytes]]) -> None:
        """Store results in one transaction (all or nothing)."""
        now = time.time()
        rows = [(k, kind, v, now) for k, v in items]
        if not rows:
            return
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO results VALUES (?,?,?,?)", rows)
        self.writes += len(rows)

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            if kind is None:
                return self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            return self._conn.execute("SELECT COUNT(*) FROM results WHERE kind=?", (kind,)).fetchone()[0]

    def stats(self) -> dict[str, Any]:
        return {"path": str(self.path), "hits": self.hits, "misses": self.misses, "writes": self.writes}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "ResultCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

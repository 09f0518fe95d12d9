"""kill -9 half-way through scoring, run again: same output, no finished pass recomputed."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORDS = "budget hiring launch meeting customer refund order delivery invoice schedule team report".split()


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
        rows.append({
            "id": i,
            "instruction": f"Task {i}: summarise the {words(3)} notes in {i % 5 + 1} points.",
            "input": words(rng.randint(10, 40)),
            "output": words(rng.randint(15, 60)),
        })
    return rows


def run_cli(args: list[str], **kw) -> subprocess.Popen:
    code = "from ontask.cli.main import app; app()"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def pass_count(cache: Path) -> int:
    if not cache.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM results WHERE kind='pass'").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


@pytest.fixture(scope="module")
def slow_tiny(tmp_path_factory) -> Path:
    """A somewhat larger random model so that a 300-row run lasts long enough to be killed."""
    from ontask.testing.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny4") / "m", layers=4, hidden=64)


def test_kill_minus_9_then_resume_gives_identical_output(tmp_path, slow_tiny):
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in make_rows(300)), encoding="utf-8")
    config = tmp_path / "cfg.yaml"
    config.write_text("score:\n  chunk_rows: 20\n  batch_tokens: 1024\n")
    common = [str(src), "--scorer", f"hf:{slow_tiny}", "--metrics", "ppl,ifd,tss", "-k", "2", "--config", str(config)]

    ref = run_cli(["score", *common, "-o", str(tmp_path / "ref"), "--cache", str(tmp_path / "ref.sqlite")])
    assert ref.wait(timeout=600) == 0, ref.stdout.read().decode()
    ref_manifest = json.loads((tmp_path / "ref" / "run.json").read_text())
    total = ref_manifest["counts"]["passes_computed"]
    assert total == ref_manifest["counts"]["passes_needed"] > 300  # true + empty + alternatives, deduplicated

    cache = tmp_path / "resume.sqlite"
    args = ["score", *common, "-o", str(tmp_path / "out"), "--cache", str(cache)]
    proc = run_cli(args)
    deadline = time.time() + 300
    while pass_count(cache) < total // 2:
        assert proc.poll() is None, "the run finished before it could be killed; make it slower"
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = pass_count(cache)
    assert total // 2 <= at_kill < total
    assert not (tmp_path / "out" / "data.jsonl").exists()  # nothing half-written

    again = run_cli(args)
    assert again.wait(timeout=600) == 0, again.stdout.read().decode()
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    counts = manifest["counts"]
    # Every pass committed before the kill is reused; only the chunk in flight is computed.
    assert counts["passes_cached"] == at_kill
    assert counts["passes_computed"] == total - at_kill
    assert (tmp_path / "out" / "data.jsonl").read_bytes() == (tmp_path / "ref" / "data.jsonl").read_bytes()

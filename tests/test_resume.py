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
    """The CLI in a child process that takes Ctrl-C as a user's shell would deliver it: SIGINT
    back to its default before Python starts (a child inherits an ignored SIGINT, and earlier
    tests' libraries may have set the test process to ignore it; Python then never raises
    KeyboardInterrupt and the run goes on to the end)."""
    code = "from ontask.cli.main import app; app()"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


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


def pass_stamps(cache: Path) -> dict[str, float]:
    with sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=5) as conn:
        return dict(conn.execute("SELECT key, created FROM results WHERE kind='pass'").fetchall())


def test_interrupts_at_three_moments_of_one_chunk_lose_at_most_a_batch(tmp_path, slow_tiny):
    """A 100-row run is one chunk (128 rows): each forward batch is committed as it finishes,
    so Ctrl-C or kill -9 at any moment keeps every finished batch. Three interrupts at seeded
    random moments, each followed by a rerun: no committed pass is ever computed again (its
    cache entry keeps its first timestamp), the final run computes exactly what was not
    committed (run.json), and the output is byte-identical to an uninterrupted run's."""
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in make_rows(100, seed=1)), encoding="utf-8")
    config = tmp_path / "cfg.yaml"
    config.write_text("score:\n  batch_tokens: 512\n")  # many small batches
    common = [str(src), "--scorer", f"hf:{slow_tiny}", "--metrics", "ppl,ifd,tss", "-k", "2", "--config", str(config)]

    ref = run_cli(["score", *common, "-o", str(tmp_path / "ref" / "s.jsonl"), "--cache", str(tmp_path / "ref.sqlite")])
    assert ref.wait(timeout=600) == 0, ref.stdout.read().decode()
    total = json.loads((tmp_path / "ref" / "s.run.json").read_text())["counts"]["passes_computed"]

    cache = tmp_path / "resume.sqlite"
    args = ["score", *common, "-o", str(tmp_path / "out" / "s.jsonl"), "--cache", str(cache)]
    rng = random.Random(7)
    moments = sorted(rng.uniform(0.1, 0.75) for _ in range(3))  # a quarter left: the signal lands before the end
    stamps: dict[str, float] = {}
    for moment, sig in zip(moments, (signal.SIGINT, signal.SIGKILL, signal.SIGINT)):
        proc = run_cli(args)
        deadline = time.time() + 300
        while pass_count(cache) < int(total * moment):
            assert proc.poll() is None, "the run finished before it could be interrupted; make it slower"
            assert time.time() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=120)
        said = proc.stdout.read().decode()
        if sig == signal.SIGINT:
            assert code == 130 and "run the same command again to resume" in said, said
        else:
            assert code == -signal.SIGKILL
        now = pass_stamps(cache)
        assert all(now[k] == t for k, t in stamps.items()), "a committed pass was computed again"
        assert len(now) >= len(stamps) and len(now) < total
        stamps = now
        assert not (tmp_path / "out" / "s.jsonl").exists()  # nothing half-written

    final = run_cli(args)
    assert final.wait(timeout=600) == 0, final.stdout.read().decode()
    counts = json.loads((tmp_path / "out" / "s.run.json").read_text())["counts"]
    assert counts["passes_cached"] == len(stamps)
    assert counts["passes_computed"] == total - len(stamps)
    assert all(pass_stamps(cache)[k] == t for k, t in stamps.items())
    assert (tmp_path / "out" / "s.jsonl").read_bytes() == (tmp_path / "ref" / "s.jsonl").read_bytes()

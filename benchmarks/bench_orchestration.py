"""Orchestration of many chat calls: ontask vs distilabel 1.5.3 vs bespokelabs-curator 0.1.31.

Three clients send the same N distinct chat calls (default 1,000, a system and a user turn,
max_tokens 256) to the project's fake OpenAI-compatible server (`python -m
ontask.testing.fake_server`, its own process, a fresh one per client and mode, answering
after a fixed latency), each with C requests in flight (default 64):

* ontask: `OpenAIChatGenerator(concurrency=C)` in `CachedGenerator` over a fresh
  `ResultCache` (SQLite; every answer committed as it arrives): the production path;
* distilabel: a `Pipeline` `LoadDataFromDicts >> TextGeneration(OpenAILLM)` with
  `input_batch_size` = C (distilabel's concurrency knob: one `asyncio.gather` per batch);
* curator: `curator.LLM(backend="openai")` with `max_concurrent_requests` = C and
  rate limits set far out of reach.

Each client runs as a subprocess script from `benchmarks/peers/` (`run_*.py`, which print
a `RESULT {json}` line; see their docstrings for every setting). The peers run in their own
virtualenv, `.venv-peers`, created here on first use from `benchmarks/peers/requirements.txt`
(or by hand: `python3.11 -m venv .venv-peers && .venv-peers/bin/pip install -r
benchmarks/peers/requirements.txt`), so they never touch the project's `.venv`.

Modes (each prints a markdown table):

1. clean: wall seconds of the client's call (imports and set-up excluded), ratio to the
   ideal ceil(N / C) x latency, rows completed; from the server's request log, the span
   first request received -> last answer sent, the peak of requests in flight and the
   number of HTTP requests.
2. faults (`--skip-faults` to skip): the server answers 5% 500s, 5% 429s and 2% broken
   200 bodies (truncated / not JSON / no choices), seeded; rows completed and wall time.
3. kill -9 (`--skip-kill` to skip): the client runs against a server that logs every
   answered request, is killed with SIGKILL (its whole process group) once the log shows
   N/2 answers with status 200, and is started again with the same cache / working dir to
   completion. "answered calls sent twice" counts request bodies the server answered with
   200 in the first run and received again in the second; the requests answered in the last
   50 ms before the kill (answers possibly still in flight to the client) explain a
   non-zero count.

    .venv/bin/python benchmarks/bench_orchestration.py
    .venv/bin/python benchmarks/bench_orchestration.py --only ontask,curator --skip-kill
    .venv/bin/python benchmarks/bench_orchestration.py --calls 2000 --concurrency 128 --latency 0.1

No data or model is needed; the peers' venv needs the package registry once (~1-2 min).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_chat_concurrency import fake_server  # noqa: E402  (the same server start-up as the other benchmarks)

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
PEERS_VENV = ROOT / ".venv-peers"
CLIENTS = ("ontask", "distilabel", "curator")
EXTRA_CLIENTS = ("ontask-fixed",)  # ontask with rate={"adaptive": False}: only when named in --only
FAULTS = ["--fail-rate-500", "0.05", "--fail-rate-429", "0.05", "--fail-rate-bad-body", "0.02", "--seed", "7"]
PINS = {"distilabel": "1.5.3", "bespokelabs-curator": "0.1.31"}


# -- the peers' virtualenv -----------------------------------------------------------------
def peers_python() -> Path:
    """.venv-peers/bin/python, created and filled from peers/requirements.txt if needed."""
    py = PEERS_VENV / "bin" / "python"
    if not py.exists():
        print(f"creating {PEERS_VENV} (once)...", file=sys.stderr, flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(PEERS_VENV)], check=True)
        (PEERS_VENV / ".gitignore").write_text("*\n")  # keep git status clean
    probe = "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in %r}))" % (list(PINS),)
    try:
        found = json.loads(subprocess.run([str(py), "-c", probe], capture_output=True, text=True, check=True).stdout)
    except (subprocess.CalledProcessError, json.JSONDecodeError):
        found = {}
    if found != PINS:
        print(f"installing {PEERS / 'requirements.txt'} into {PEERS_VENV} (a few minutes)...", file=sys.stderr, flush=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(PEERS / "requirements.txt")], check=True)
    return py


def read_log(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line still being written
            pass
    return out


def chat_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat requests that carry messages (curator's empty rate-limit probe is left out)."""
    return [e for e in entries if e["path"].endswith("/chat/completions") and isinstance(e.get("body"), dict)
            and e["body"].get("messages")]


def body_key(entry: dict[str, Any]) -> str:
    """The identity of a call: its messages (clients add different sampling fields)."""
    return json.dumps(entry["body"]["messages"], sort_keys=True)


@dataclass
class ServerStats:
    requests: int = 0
    ok: int = 0
    span: float = float("nan")
    peak: int = 0
    faults: dict[str, int] = field(default_factory=dict)


def server_stats(entries: list[dict[str, Any]]) -> ServerStats:
    chats = chat_entries(entries)
    if not chats:
        return ServerStats()
    answered = [e["answered"] for e in chats if e["answered"] is not None]
    faults = collections.Counter((e["fault"] or "none").split(":")[0] for e in chats)
    return ServerStats(requests=len(chats), ok=sum(e["status"] == 200 for e in chats),
                       span=(max(answered) if answered else math.nan) - min(e["received"] for e in chats),
                       peak=max(e["in_flight"] for e in chats), faults=dict(sorted(faults.items())))


# -- the clients ---------------------------------------------------------------------------
def client_cmd(client: str, url: str, prompts: Path, state: Path, args: argparse.Namespace) -> list[str]:
    """argv of one client run; `state` is its cache file / working dir (same path = resume)."""
    common = ["--base-url", url, "--prompts", str(prompts), "--concurrency", str(args.concurrency)]
    if client in ("ontask", "ontask-fixed"):
        fixed = ["--fixed"] if client == "ontask-fixed" else []
        return [sys.executable, str(PEERS / "run_ontask.py"), *common, "--cache", str(state), *fixed]
    py = str(peers_python())
    if client == "curator":
        return [py, str(PEERS / "run_curator.py"), *common, "--work-dir", str(state)]
    return [py, str(PEERS / "run_distilabel.py"), *common, "--cache-dir", str(state), "--use-cache",
            "--replicas", str(args.distilabel_replicas)]


def client_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    return env


def parse_result(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return None


def run_client(client: str, url: str, prompts: Path, state: Path, logs: Path, args: argparse.Namespace,
               timeout: float) -> dict[str, Any]:
    """Run one client to completion (its output in `logs`.stdout/.stderr); its RESULT fields
    plus `process_s`, or `error`."""
    cmd = client_cmd(client, url, prompts, state, args)
    out_path, err_path = logs.with_suffix(".stdout"), logs.with_suffix(".stderr")
    t0 = time.perf_counter()
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=client_env(), cwd=str(PEERS), start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"error": f"timed out after {timeout:.0f} s (killed)", "process_s": time.perf_counter() - t0}
    result = parse_result(out_path.read_text()) or {"error": f"exit code {proc.returncode}, no RESULT line "
                                                             f"(see {err_path})"}
    result["process_s"] = time.perf_counter() - t0
    return result


def write_prompts(path: Path, n: int, tag: str) -> None:
    prompts = [{"system": "You review products briefly.",
                "user": f"[{tag}] Review product number {i}: a sturdy blue kettle."} for i in range(n)]
    path.write_text(json.dumps(prompts))


def short(settings: str | None) -> str:
    return (settings or "").replace("|", "/")


# -- modes ---------------------------------------------------------------------------------
def bench_throughput(clients: list[str], args: argparse.Namespace, tmp: Path, faults: bool) -> None:
    n, c, lat = args.calls, args.concurrency, args.latency
    ideal = math.ceil(n / c) * lat
    label = "faults" if faults else "clean"
    prompts = tmp / f"prompts-{label}.json"
    write_prompts(prompts, n, label)
    flags = ["--latency", str(lat), *(FAULTS if faults else [])]
    rows, notes = [], []
    for client in clients:
        print(f"[{label}] {client}...", file=sys.stderr, flush=True)
        log = tmp / f"{label}-{client}.log.jsonl"
        with fake_server(*flags, log=log) as url:
            res = run_client(client, url, prompts, tmp / f"{label}-{client}.state", tmp / f"{label}-{client}",
                             args, timeout=args.client_timeout)
        st = server_stats(read_log(log))
        rows.append((client, res, st))
        notes.append(f"- {client}: {short(res.get('settings') or res.get('error'))}")
        if res.get("run_error"):
            notes.append(f"  - **{client}'s run raised** `{short(res['run_error'])}`; rows counted from what it wrote to disk")
    print()
    title = "faults: 5% 500, 5% 429, 2% broken bodies" if faults else "clean"
    print(f"### {title}: {n} calls, concurrency {c}, latency {lat:g} s, ideal {ideal:.2f} s")
    print()
    print("| client | wall s | x ideal | rows ok | server span s | peak in flight | HTTP requests | 200s |"
          + (" server faults |" if faults else "") + " process s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if faults else "") + "---:|")
    for client, res, st in rows:
        if "error" in res:
            wall = ratio = ok = "-"
            ok = f"error: {res['error']}"
        else:
            wall, ratio, ok = f"{res['wall_s']:.2f}", f"{res['wall_s'] / ideal:.3f}", f"{res['ok']}/{res['total']}"
        fault_col = f" {', '.join(f'{k} {v}' for k, v in st.faults.items() if k != 'none')} |" if faults else ""
        print(f"| {client} | {wall} | {ratio} | {ok} | {st.span:.2f} | {st.peak} | {st.requests} | {st.ok} |"
              f"{fault_col} {res['process_s']:.1f} |")
    print()
    print("Settings:")
    print("\n".join(notes))
    for client, res, _ in rows:
        if client == "ontask" and faults and res.get("ok") != res.get("total"):
            print(f"\n**ontask completed {res.get('ok')}/{res.get('total')} rows under faults (expected all).**")
    print(flush=True)


def run_and_kill(client: str, url: str, prompts: Path, state: Path, log: Path, logs: Path, at: int,
                 args: argparse.Namespace) -> tuple[float, int]:
    """Start the client, SIGKILL its process group once the log shows `at` 200 answers.
    Returns (kill time, 200 answers seen when the kill was sent); (nan, n) if it ended first."""
    cmd = client_cmd(client, url, prompts, state, args)
    with logs.with_suffix(".stdout").open("w") as out, logs.with_suffix(".stderr").open("w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=client_env(), cwd=str(PEERS), start_new_session=True)
        seen, pos, buf = 0, 0, ""
        deadline = time.time() + args.client_timeout
        while proc.poll() is None and time.time() < deadline:
            if log.exists():
                with log.open() as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
                buf += chunk
                *lines, buf = buf.split("\n")
                for line in lines:
                    e = json.loads(line)
                    if e["status"] == 200 and e["path"].endswith("/chat/completions"):
                        seen += 1
                if seen >= at:
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = time.time()
                    proc.wait()
                    return killed, seen
            time.sleep(0.002)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return math.nan, seen


def bench_kill(clients: list[str], args: argparse.Namespace, tmp: Path) -> None:
    n, lat = args.calls, args.latency
    at = max(1, n // 2)
    prompts = tmp / "prompts-kill.json"
    write_prompts(prompts, n, "kill")
    rows = []
    for client in clients:
        print(f"[kill -9] {client}...", file=sys.stderr, flush=True)
        log, state = tmp / f"kill-{client}.log.jsonl", tmp / f"kill-{client}.state"
        with fake_server("--latency", str(lat), log=log) as url:
            killed, seen = run_and_kill(client, url, prompts, state, log, tmp / f"kill-{client}-1", at, args)
            time.sleep(1.0)  # let the server log the connections the kill dropped
            started2 = time.time()
            res = run_client(client, url, prompts, state, tmp / f"kill-{client}-2", args, args.rerun_timeout)
        entries = chat_entries(read_log(log))
        if math.isnan(killed):
            rows.append((client, None, res, {}))
            continue
        first = [e for e in entries if e["received"] < killed]
        second = [e for e in entries if e["received"] >= started2]
        answered1 = {}
        for e in first:
            if e["status"] == 200:
                answered1[body_key(e)] = e["answered"]
        resent = {k for k in map(body_key, second) if k in answered1}
        late = {k for k, t in answered1.items() if t >= killed - 0.05}
        ages = sorted((killed - answered1[k]) * 1000 for k in resent)
        rows.append((client, dict(seen=seen, answered1=len(answered1), dropped=sum(e["status"] is None for e in first),
                                  sent2=len(second), ok2=sum(e["status"] == 200 for e in second), resent=len(resent),
                                  late=len(late), resent_late=len(resent & late),
                                  oldest=(ages[-1] if ages else None)), res, {}))
    print()
    print(f"### kill -9 at {at} answers, then rerun to completion: {n} calls, concurrency {args.concurrency}, "
          f"latency {lat:g} s")
    print()
    print("| client | 200s when killed | 200s in run 1 | run 1 requests cut off | run 2 requests | run 2 rows ok "
          "| answered calls sent twice | answered in last 50 ms | of those, sent twice | oldest twice-sent answer, ms before kill |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for client, k, res, _ in rows:
        ok2 = f"{res['ok']}/{res['total']}" if "ok" in res else f"error: {res.get('error')}"
        if k is None:
            print(f"| {client} | finished before the kill | | | | {ok2} | | | | |")
            continue
        oldest = f"{k['oldest']:.0f}" if k["oldest"] is not None else "-"
        print(f"| {client} | {k['seen']} | {k['answered1']} | {k['dropped']} | {k['sent2']} | {ok2} | {k['resent']} "
              f"| {k['late']} | {k['resent_late']} | {oldest} |")
    print()
    print("run 1 requests cut off: requests the server had received but not answered when the client died.")
    print(flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--only", default=",".join(CLIENTS),
                    help="comma-separated, from " + ",".join(CLIENTS + EXTRA_CLIENTS) + " (default: the first three)")
    ap.add_argument("--skip-faults", action="store_true")
    ap.add_argument("--skip-kill", action="store_true")
    ap.add_argument("--skip-clean", action="store_true")
    ap.add_argument("--distilabel-replicas", type=int, default=1,
                    help="TextGeneration replicas; each gets input_batch_size = concurrency / replicas")
    ap.add_argument("--client-timeout", type=float, default=600.0, help="seconds per client run")
    ap.add_argument("--rerun-timeout", type=float, default=180.0, help="seconds for the run after the kill")
    ap.add_argument("--keep", default=None, help="keep logs, caches and stderr of every run in this folder")
    args = ap.parse_args()
    clients = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(clients) - set(CLIENTS) - set(EXTRA_CLIENTS)
    if unknown:
        ap.error(f"unknown client(s) {', '.join(sorted(unknown))}: use {', '.join(CLIENTS + EXTRA_CLIENTS)}")
    if set(clients) - {"ontask", "ontask-fixed"}:
        peers_python()
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory(prefix="bench-orch-") as t:
        tmp = Path(args.keep) if args.keep else Path(t)
        tmp.mkdir(parents=True, exist_ok=True)
        if not args.skip_clean:
            bench_throughput(clients, args, tmp, faults=False)
        if not args.skip_faults:
            bench_throughput(clients, args, tmp, faults=True)
        if not args.skip_kill:
            bench_kill(clients, args, tmp)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Server scoring against a real third-party server: llama-cpp-python vs the embedded scorer.

The embedded SmolLM2 GGUF is served by llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server`, installed by `scripts/ensure-llama-cpp.sh`) and scored
through the `openai:` scorer (echo mode, SmolLM2's own template given as `hf:` the
converted checkpoint, since that server cannot apply its template for a client); the same
passes are scored by the `embedded` scorer (transformers, fp32 weights dequantised from
the same GGUF). The server computes on the Q4_1 weights with quantised activations, so
the two differ by kernels and precision only. Prints, per pass kind, the max and median
absolute difference of lp (mean log-prob per output token) and of the summed log-prob,
Spearman's rho of lp, and whether the token counts agree.

    .venv/bin/python benchmarks/bench_llama_agreement.py --rows 30     # ~5 min on 2 cores

Rows: the first instance of the first N Self-Instruct seed tasks (`../shared/data`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "seed_tasks.jsonl"


def rows(n: int) -> list[tuple[str, str]]:
    out = []
    for line in DATA.read_text(encoding="utf-8").splitlines()[:n]:
        r = json.loads(line)
        inst = r["instances"][0]
        user = r["instruction"] + (f"\n\n{inst['input']}" if inst["input"].strip() else "")
        out.append((user, inst["output"]))
    return out


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(x: list[float]) -> list[float]:
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def main() -> None:
    from ontask.models import PassRequest, PassResult, load_scorer
    from ontask.models.embedded.weights import converted_checkpoint, gguf_path, load_embedded_scorer
    from ontask.testing.llama_server import available, llama_server

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    reason = available()
    if reason:
        raise SystemExit(reason)
    data = rows(args.rows)
    kinds = {"instruction + input": [PassRequest(u, o) for u, o in data],
             "empty prompt (IFD)": [PassRequest("", o) for _, o in data]}
    flat = [r for reqs in kinds.values() for r in reqs]
    folder, _ = converted_checkpoint()
    t = time.perf_counter()
    local = load_embedded_scorer().score(flat)
    t_local = time.perf_counter() - t
    with llama_server(gguf_path(), threads=args.threads) as srv:
        scorer = load_scorer({"spec": "openai:smollm2", "base_url": srv.base_url, "template": f"hf:{folder}",
                              "concurrency": 1, "timeout": 300})
        t = time.perf_counter()
        remote = scorer.score(flat)
        t_remote = time.perf_counter() - t
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}, {os.cpu_count()} cores; llama-cpp-python {_version('llama-cpp-python')}, "
          f"{args.threads} threads; {len(data)} rows of {DATA.name}\n")
    print("| passes | n | scored | same token counts | lp max abs diff | lp median abs diff | sum max abs diff | "
          "Spearman lp |")
    print("|---|---|---|---|---|---|---|---|")
    i = 0
    for kind, reqs in kinds.items():
        pairs = list(zip(remote[i : i + len(reqs)], local[i : i + len(reqs)]))
        i += len(reqs)
        ok = [(g, w) for g, w in pairs if isinstance(g, PassResult) and isinstance(w, PassResult)]
        d_lp = [abs(g.mean_logprob - w.mean_logprob) for g, w in ok]
        d_sum = [abs(g.sum_logprob - w.sum_logprob) for g, w in ok]
        same = sum(g.n_output == w.n_output and g.n_prompt == w.n_prompt for g, w in ok)
        rho = spearman([g.mean_logprob for g, _ in ok], [w.mean_logprob for _, w in ok]) if len(ok) > 2 else float("nan")
        print(f"| {kind} | {len(reqs)} | {len(ok)} | {same} | {max(d_lp):.4f} | {statistics.median(d_lp):.4f} | "
              f"{max(d_sum):.3f} | {rho:.4f} |")
    failed = [g.reason for g in remote if not isinstance(g, PassResult)]
    print(f"\nserver failures: {len(failed)}" + (f" (first: {failed[0]})" if failed else ""))
    tokens = sum(w.n_prompt + w.n_output for w in local if isinstance(w, PassResult))
    print(f"time: embedded {t_local:.1f} s, llama.cpp server {t_remote:.1f} s for {len(flat)} passes "
          f"({tokens} tokens; the server echoes log-probs at ~25 ms a token, one request at a time)")


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Throughput of `ontask score` (TSS k=4 + IFD) against two reference implementations.

Run on demand (`make bench`, or `python benchmarks/bench_scoring.py --rows 100`); it is
not a test. What it does, all in one process, one method after the other, with the same
torch thread count and the embedded scorer (SmolLM2-135M-Instruct, fp32) loaded once
beforehand (model load time is excluded everywhere):

1. Rows: the first N examples of the Self-Instruct user-oriented set, then the seed
   tasks (../shared/data, read with `ontask.io.read_examples`, which expands instances),
   written to a temporary JSONL file.
2. Requests: exactly the passes `run_score` computes for ScoreConfig(metrics=["ifd",
   "tss"], alternatives="random", k): per row the true pass, the empty pass and k random
   alternatives, planned with the pipeline's own code (`Scoring` + `plan_row`) and
   deduplicated. Every method scores this same list of (rendered prompt, output) pairs.
3. Methods:
   - ontask: `run_score` end to end (read, plan, score, write) with a fresh, empty cache;
   - (a) Cherry_LLM-style IFD loop: one request at a time, one unbatched forward of the
     whole sequence through `model(input_ids, labels=labels)` with labels -100 on the
     prompt tokens (full-vocabulary logits at every position), mean log-prob = -loss;
   - (b) lm-evaluation-harness: `HFLM.loglikelihood` over `Instance`s with
     context = rendered prompt, continuation = output.
4. Roofline: the best fp32 GEMM rate measured on this CPU on the model's own linear shapes
   (as transformers runs them, and fused as ontask's CPU forward runs them: q/k/v as one,
   gate/up as one) at M=2048, through every exact path torch offers (default MKL, MKL
   packed, oneDNN packed, oneDNN on its own layout), divided by the flops a pass needs per
   token: 2 x non-embedding params (the linears), plus causal attention (QK^T and AV:
   4 x layers x heads x head_dim x (position+1) flops per token, summed over the real
   lengths of the passes), plus the vocabulary head on output tokens only (what a scorer
   must compute). The body-only roofline (2 x non-embedding params) is shown beside it, and
   a sustained roofline: the model's own linears timed in forward order with their real
   weights (what the CPU sustains over a forward; one shape repeated stays cache-hot).
5. ontask is run twice: with its default kernels (`kernels: auto`, the fused CPU forward
   here) and with `kernels: eager` (transformers' forward, what it ran before), same passes.

Tokens are the same for every method: prompt + output tokens of every computed pass, as
ontask tokenises them (= run.json's tokens_computed). Tokenisation is inside every timing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DATA_FILES = ("user_oriented_dev.jsonl", "seed_tasks.jsonl")


# --------------------------------------------------------------------------------------
# Machine and data
# --------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def load_examples(data_dir: Path, n: int):
    from ontask.io import read_examples
    from ontask.records import Example

    examples = []
    for name in DATA_FILES:
        path = data_dir / name
        if not path.exists():
            continue
        for chunk in read_examples(path):
            for item in chunk:
                if isinstance(item, Example):
                    examples.append(item)
                    if len(examples) == n:
                        return examples
    return examples


def write_alpaca(examples, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"instruction": ex.instruction, "input": ex.input, "output": ex.output},
                               ensure_ascii=False) + "\n")


def plan_requests(path: Path, cfg, scorer) -> list[list]:
    """The passes `run_score` computes, chunk by chunk, new ones only (later duplicates hit
    the cache). Built with the pipeline's own planning code so the set is the same."""
    from ontask.io import read_examples
    from ontask.records import Example
    from ontask.scoring.pipeline import Scoring
    from ontask.scoring.pipeline import chunks as split_chunks
    from ontask.scoring.plan import plan_row

    job = Scoring(cfg, scorer, cache=None)  # the cache is not touched by planning
    job.build_alternatives(path)
    seen: set = set()
    chunks = []
    for chunk in split_chunks(read_examples(path, cfg.columns), cfg.chunk_rows):
        new = []
        for seq, item in chunk:
            if not isinstance(item, Example):
                continue
            plan = plan_row(seq, item, cfg, job._alternatives_for(seq, item))
            for req in plan.requests():
                if req not in seen:
                    seen.add(req)
                    new.append(req)
        chunks.append(new)
    return chunks


# --------------------------------------------------------------------------------------
# Roofline
# --------------------------------------------------------------------------------------
def _best_time(fn, min_runs: int = 3, min_s: float = 0.5) -> float:
    fn()  # warm-up
    times, t_all = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - t_all < min_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 50:
            break
    return min(times)


def cpu_facts() -> dict:
    """What sets this CPU's fp32 limit: model, family/model numbers, SIMD flags, cores, clock."""
    facts = {"model": cpu_model(), "family": None, "model_number": None, "flags": [], "cores": os.cpu_count() or 1,
             "mhz": None}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return facts
    first = text.split("\n\n")[0]
    for line in first.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "cpu family":
            facts["family"] = int(value)
        elif key == "model":
            facts["model_number"] = int(value)
        elif key == "flags":
            facts["flags"] = sorted(f for f in value.split() if f.startswith(("avx", "amx", "fma", "sse4")))
        elif key == "cpu MHz":
            facts["mhz"] = float(value)
    try:
        max_khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text().strip()
        facts["mhz"] = max(facts["mhz"] or 0.0, int(max_khz) / 1000)
    except (OSError, ValueError):
        pass
    return facts


def fma_peak(facts: dict) -> tuple[float | None, str]:
    """fp32 FMA peak, GFLOP/s: cores x clock x lanes x 2 FMA units x 2 flops (AVX-512: 16 lanes,
    AVX2: 8). Two FMA units per core is the server-part assumption; the clock is the reported
    one (turbo can exceed it, AVX-512 licence clocks can fall below it), so the measured GEMM
    rate, not this, is the roofline."""
    lanes = 16 if "avx512f" in facts["flags"] else 8 if "avx2" in facts["flags"] else 4
    if not facts["mhz"]:
        return None, "clock unknown"
    peak = facts["cores"] * facts["mhz"] / 1e3 * lanes * 2 * 2
    return peak, f"{facts['cores']} cores x {facts['mhz'] / 1e3:.2f} GHz x {lanes} lanes x 2 FMA units x 2 flops"


def gemm_paths(x: torch.Tensor, w: torch.Tensor) -> dict[str, object]:
    """y = x @ w.T through every exact fp32 path torch offers on this CPU: the default
    (`F.linear`, MKL's SGEMM here), MKL's packed GEMM (weights reordered once, as a frozen
    graph does), oneDNN's packed linear, and oneDNN on its own tensor layout (conversion
    outside the timing). Each is a callable; a path this build lacks is left out."""
    import torch.nn.functional as F

    m = x.shape[0]
    paths: dict[str, object] = {"default (F.linear)": lambda: F.linear(x, w)}
    try:
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, m)
        torch.ops.mkl._mkl_linear(x, packed, w, None, m)
        paths["MKL packed"] = lambda: torch.ops.mkl._mkl_linear(x, packed, w, None, m)
    except (AttributeError, RuntimeError):
        pass
    try:
        dnn = torch.ops.mkldnn._reorder_linear_weight(w, None)
        torch.ops.mkldnn._linear_pointwise(x, dnn, None, "none", [], "")
        paths["oneDNN packed"] = lambda: torch.ops.mkldnn._linear_pointwise(x, dnn, None, "none", [], "")
    except (AttributeError, RuntimeError):
        pass
    try:
        xm, wm = x.to_mkldnn(), w.to_mkldnn()
        torch._C._nn.mkldnn_linear(xm, wm)
        paths["oneDNN layout"] = lambda: torch._C._nn.mkldnn_linear(xm, wm)
    except (AttributeError, RuntimeError):
        pass
    return paths


def matmul_roofline(cfg) -> tuple[list[list[str]], float, dict[str, float]]:
    """GFLOP/s of fp32 GEMMs on the model's own linear shapes at M=2048 (a full batch of
    `batch_tokens`), per exact path: the table, the best rate (the roofline), and each path's
    flop-weighted rate over one layer (q, k, v, o, gate, up, down)."""
    h, inter, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    head_dim = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * head_dim
    m = 2048
    layer = (("q/o proj", h, h, 2), ("k/v proj", h, kv, 2), ("gate/up proj", h, inter, 2), ("down proj", inter, h, 1))
    fused = (("q+k+v fused", h, h + 2 * kv, 0), ("gate+up fused", h, 2 * inter, 0))  # ontask's CPU forward
    shapes = [*layer, *fused, ("lm_head", h, v, 0)]
    table, per_path, best = [], {}, 0.0
    with torch.inference_mode():
        for name, k, n, count in shapes:
            x, w = torch.randn(m, k), torch.randn(n, k)
            rates = {p: 2.0 * m * k * n / _best_time(fn) / 1e9 for p, fn in gemm_paths(x, w).items()}
            best = max(best, *rates.values())
            for p, r in rates.items():
                seconds, flops = per_path.get(p, (0.0, 0.0))
                per_path[p] = (seconds + count * 2.0 * m * k * n / (r * 1e9), flops + count * 2.0 * m * k * n)
            table.append([f"{name} {m}x{k} @ {k}x{n}", *(f"{r:.1f}" for r in rates.values())])
    layer_rate = {p: f / s / 1e9 for p, (s, f) in per_path.items() if s}
    return table, best, layer_rate


def sequence_rate(scorer, m: int = 2048) -> tuple[float, int]:
    """GFLOP/s of the model's own linears run in forward order (every layer's real weights,
    as ontask's forward runs them: fused q+k+v, o, fused gate+up, down; transformers' seven
    per layer when the fused forward does not apply) at M=`m`, best of 5: what this CPU
    sustains on the model's GEMMs, where one shape repeated (`matmul_roofline`) keeps its
    weights and inputs hot. Also the number of GEMMs timed."""
    if scorer._fused is not None:  # ontask's own linears, on the GEMM path the scorer picked
        linears = [lin for layer in scorer._fused.layers for lin in layer[:4]]
    else:
        linears = [mod for mod in scorer._body.modules() if isinstance(mod, torch.nn.Linear)]
    shapes = [(lin.out_features, lin.in_features) for lin in linears]
    inputs = {k: torch.randn(m, k) for _, k in shapes}

    def run() -> None:
        for lin, (_, k) in zip(linears, shapes):
            lin(inputs[k])

    with torch.inference_mode():
        seconds = _best_time(run, min_runs=5, min_s=0.0)
    return 2.0 * m * sum(n * k for n, k in shapes) / seconds / 1e9, len(linears)


def attention_flops(cfg, lengths: list[int]) -> float:
    """Flops of causal attention over passes of these lengths: per layer, QK^T and AV each
    2 x heads x head_dim flops per (query, visible key) pair, and a causal row at position
    p sees p + 1 keys, so a pass of length L has L (L + 1) / 2 pairs."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_pair = 2 * 2 * cfg.num_attention_heads * head_dim * cfg.num_hidden_layers
    return float(sum(per_pair * n * (n + 1) // 2 for n in lengths))


class _Captured(Exception):
    """Raised by `plan_batches`' stand-in for the forward, once it has the batch's layout."""


def plan_batches(scorer, encoded: list[tuple[list[int], int]]) -> list[dict]:
    """ontask's own packed plan for these passes, as its fused forward would run it: per
    batch, the tokens run through the body, the output positions the head reads, and the
    segments (spans, context) attention sees. The scorer's `_fused_batch` lays each batch
    out; `FusedBody.segments` is stood in for, so nothing is computed."""
    body, caught = scorer._fused, []

    def capture(ids, positions, spans, context):
        caught.append({"tokens": len(ids), "spans": spans, "context": context})
        raise _Captured

    body.segments = capture  # an instance attribute: shadows the method for this body only
    try:
        for batch in scorer._fused_plan([(i, ids, start) for i, (ids, start) in enumerate(encoded)]):
            try:
                scorer._fused_batch(batch)
            except _Captured:
                caught[-1]["outputs"] = sum(len(ids) - start for _, ids, start in batch)
    finally:
        del body.segments
    return caught


def plan_ceiling(scorer, batches: list[dict]) -> dict[str, float]:
    """Seconds of the two kinds of work ontask's plan cannot do without, each replayed alone
    with torch's kernels, best of 2: every GEMM of every batch (the body's fused linears with
    their real weights on the batch's tokens, in forward order, and the vocabulary head on
    its output positions, into one buffer as the scorer does), and every layer's attention
    (`FusedBody.segment_attention` on the batch's real segments, random q, k, v). Their sum is
    what this design would take if everything else (norms, rotary, SiLU, the log-softmax,
    Python) were free: the ceiling that the eager kernels leave to it."""
    body, head = scorer._fused, scorer._head.weight
    h, kvh, d = body.heads, body.kv_heads, body.head_dim
    width = max(b["tokens"] for b in batches)
    x_in = {lin.in_features: torch.randn(width, lin.in_features) for layer in body.layers for lin in layer[:4]}
    res = torch.randn(width, body.layers[0][1].out_features)
    head_out = torch.empty(max(b["outputs"] for b in batches), head.shape[0])

    def gemms() -> None:
        for b in batches:
            t, r = b["tokens"], res[: b["tokens"]]
            for qkv, o, gate_up, down, _ in body.layers:
                qkv(x_in[qkv.in_features][:t])
                o(x_in[o.in_features][:t], residual=r)
                gate_up(x_in[gate_up.in_features][:t])
                down(x_in[down.in_features][:t], residual=r)
            torch.mm(x_in[head.shape[1]][: b["outputs"]], head.t(), out=head_out[: b["outputs"]])

    def attention() -> None:
        for b in batches:
            y = torch.randn(1, b["tokens"], h + 2 * kvh, d)  # as the qkv GEMM lays q, k, v out
            q, k, v = (y[:, :, :h].transpose(1, 2), y[:, :, h : h + kvh].transpose(1, 2),
                       y[:, :, h + kvh :].transpose(1, 2))
            attend = body.segment_attention(b["spans"], b["context"])
            for layer, (*_, scale) in enumerate(body.layers):
                attend(layer, q, k, v, scale)

    def best_of_2(fn) -> float:
        times = []
        for _ in range(2):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    with torch.inference_mode():
        return {"gemm_s": best_of_2(gemms), "attention_s": best_of_2(attention)}


def _lossy_modes(choice: str, facts: dict) -> list[str]:
    if choice == "none":
        return []
    if choice == "auto":
        return ["bf16"] if {"avx512_bf16", "amx_bf16"} & set(facts["flags"]) else []
    return [m.strip() for m in choice.split(",") if m.strip()]


def non_embedding_params(model) -> int:
    emb = {id(p) for p in model.get_input_embeddings().parameters()}
    head = model.get_output_embeddings()
    if head is not None:
        emb |= {id(p) for p in head.parameters()}
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or id(p) in emb:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


# --------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------
def run_ontask(input_path: Path, cfg, scorer, requests, repeat: int) -> dict:
    from ontask.cache import ResultCache
    from ontask.scoring.pipeline import run_score
    from ontask.scoring.plan import pass_key

    best = None
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="ontask-bench-") as tmp:
            cache = ResultCache(Path(tmp) / "cache.sqlite")  # fresh: nothing is cached
            before = dict(scorer.stats)
            t = time.perf_counter()
            manifest = run_score(input_path, Path(tmp) / "out" / "scored.jsonl", cfg, scorer=scorer, cache=cache)
            wall = time.perf_counter() - t
            stats = {k: scorer.stats[k] - before.get(k, 0) for k in scorer.stats}
            found = cache.get_many([pass_key(scorer.fingerprint, r) for r in requests])
            sums = []
            for r in requests:
                blob = found.get(pass_key(scorer.fingerprint, r))
                sums.append(json.loads(blob)[0] if blob is not None else None)
            cache.close()
        run = {"seconds": wall, "manifest": manifest, "stats": stats, "sums": sums}
        if best is None or wall < best["seconds"]:
            best = run
    return best


def run_cherry(scorer, requests, lm_splits, repeat: int) -> dict:
    """One unbatched forward per request, loss over output tokens (Cherry_LLM's IFD code).

    Cherry's `get_perplexity_and_embedding_part_text`: labels = input_ids with -100 on the
    prompt tokens, `outputs = model(input_ids, labels=labels)`, loss = mean NLL of the
    output tokens. The prompt/output split here is ontask's (exact, no text search), so
    the losses are comparable. Untimed, from the same logits: the log-probs of the tokens
    lm-eval counts in its continuation but ontask counts in the prompt (see lm_splits).
    """
    from ontask.models.base import PassError

    model = scorer.model
    best = None
    for _ in range(repeat):
        elapsed, sums, extra = 0.0, [], []
        for i, req in enumerate(requests):
            t = time.perf_counter()
            enc = scorer.encode(req)
            if isinstance(enc, PassError):
                elapsed += time.perf_counter() - t
                sums.append(None)
                extra.append(None)
                continue
            ids, start = enc
            input_ids = torch.tensor([ids])
            labels = input_ids.clone()
            labels[0, :start] = -100
            with torch.no_grad():
                outputs = model(input_ids, labels=labels)
            loss = outputs.loss.item()
            elapsed += time.perf_counter() - t
            sums.append(-loss * (len(ids) - start))
            # untimed: log-probs of ids[j] for j in [lm-eval's context length, start)
            j0 = lm_splits[i]
            if j0 is None or j0 > start or j0 < 1:
                extra.append(None)
            else:
                with torch.no_grad():
                    rows = outputs.logits[0, j0 - 1 : start - 1].double().log_softmax(-1)
                    extra.append(float(rows.gather(1, torch.tensor(ids[j0:start])[:, None]).sum()))
        run = {"seconds": elapsed, "sums": sums, "extra": extra}
        if best is None or elapsed < best["seconds"]:
            best = run
    return best


def make_hflm(scorer, batch_size, max_batch_size: int):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=scorer.model, tokenizer=scorer.tokenizer, batch_size=batch_size,
                max_batch_size=max_batch_size, device="cpu")


def lm_eval_splits(lm, requests, prompts, outputs, scorer):
    """Per request: lm-eval's context length if its context+continuation tokens equal
    ontask's full sequence, else None; plus lm-eval's continuation token counts."""
    from ontask.models.base import PassError

    splits, cont_lens = [], []
    for prompt, out, req in zip(prompts, outputs, requests):
        ctx_enc, cont_enc = lm._encode_pair(prompt, out)
        cont_lens.append(len(cont_enc))
        enc = scorer.encode(req)
        if isinstance(enc, PassError) or ctx_enc + cont_enc != enc[0]:
            splits.append(None)
        else:
            splits.append(len(ctx_enc))
    return splits, cont_lens


def run_lmeval(lm, prompts, outputs, repeat: int) -> dict:
    from lm_eval.api.instance import Instance

    best = None
    for _ in range(repeat):
        instances = [
            Instance(request_type="loglikelihood", doc={}, arguments=(p, o), idx=i)
            for i, (p, o) in enumerate(zip(prompts, outputs))
        ]
        t = time.perf_counter()
        res = lm.loglikelihood(instances, disable_tqdm=True)
        elapsed = time.perf_counter() - t
        run = {"seconds": elapsed, "sums": [float(r[0]) for r in res]}
        if best is None or elapsed < best["seconds"]:
            best = run
    return best


def fp64_reference(model, encoded, idx, lm_split) -> dict[int, tuple[float, float | None]]:
    """Untimed: float64 copy of the model, one request at a time, exact log_softmax. Per
    request: (sum over ontask's output tokens, sum over lm-eval's continuation tokens)."""
    m64 = copy.deepcopy(model).double()
    out = {}
    with torch.no_grad():
        for i in idx:
            ids, start = encoded[i]
            logp = m64(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            per = logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]  # per[j-1] = log p(ids[j] | ids[:j])
            j0 = lm_split[i]
            out[i] = (float(per[start - 1:].sum()), float(per[j0 - 1:].sum()) if j0 else None)
    del m64
    return out


# --------------------------------------------------------------------------------------
# Padding accounting (recomputed from each method's batch plan; no model call)
# --------------------------------------------------------------------------------------
def lmeval_padded_tokens(lm, prompts, outputs, batch_size: int) -> int:
    lens = sorted((min(len(c) + len(o) - 1, lm.max_length) for c, o in
                   (lm._encode_pair(p, out) for p, out in zip(prompts, outputs))), reverse=True)
    return sum(len(lens[a:a + batch_size]) * lens[a] for a in range(0, len(lens), batch_size))


# --------------------------------------------------------------------------------------
def fmt_table(header, rows) -> str:
    cols = list(zip(*([header] + rows)))
    widths = [max(len(str(c)) for c in col) for col in cols]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w)
                                       for j, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "|" + "|".join(("-" * (w + 2)) if j == 0 else ("-" * (w + 1) + ":") for j, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


class Usage:
    """Wall time, this process's CPU time and the load average around one method: a CPU
    share well below 100% of the torch threads means other processes competed for the CPU."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> "Usage":
        self.load0 = os.getloadavg()[0]
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0
        self.load1 = os.getloadavg()[0]

    def line(self) -> str:
        share = 100 * self.cpu / (self.wall * self.threads) if self.wall else float("nan")
        return (f"CPU used {share:.0f}% of {self.threads} threads x wall; "
                f"load average {self.load0:.2f} -> {self.load1:.2f}")


def max_abs_diff(a, b, idx, n=None):
    """Max |a-b| over idx, and (if n is given) max |a-b|/n: the per-token difference."""
    pairs = [i for i in idx if a[i] is not None and b[i] is not None]
    if not pairs:
        return float("nan"), float("nan"), 0
    d = max(abs(a[i] - b[i]) for i in pairs)
    per = max(abs(a[i] - b[i]) / n[i] for i in pairs) if n is not None else float("nan")
    return d, per, len(pairs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100, help="examples to score (default 100)")
    ap.add_argument("--k", type=int, default=4, help="random alternatives per row (default 4)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per method; the best is reported")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help=f"torch threads for every method (default {torch.get_num_threads()})")
    ap.add_argument("--lm-eval-batch-size", default="16",
                    help="HFLM batch_size: an integer or 'auto' (default 16)")
    ap.add_argument("--lm-eval-max-batch-size", type=int, default=64,
                    help="HFLM max_batch_size, the start of 'auto' detection (default 64, lm-eval's)")
    ap.add_argument("--fp64-check", type=int, default=4,
                    help="passes (longest outputs) also scored by a float64 copy of the model, untimed (default 4)")
    ap.add_argument("--skip", default="", help="comma list of what to skip: cherry,lmeval,eager,ceiling")
    ap.add_argument("--lossy", default="auto",
                    help="lossy modes to time against exact fp32: comma list of bf16, or none (default auto: bf16 "
                         "where the CPU has avx512_bf16 or AMX)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default {DEFAULT_DATA})")
    args = ap.parse_args(argv)

    if not all((args.data / f).exists() for f in DATA_FILES[:1]):
        print(f"skipped: {args.data / DATA_FILES[0]} not found (the shared data folder is absent)")
        return 0
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    torch.set_num_threads(args.threads)

    from ontask.models.base import PassError
    from ontask.models.embedded.weights import load_embedded_scorer
    from ontask.scoring.config import ScoreConfig

    t = time.perf_counter()
    scorer = load_embedded_scorer()
    load_s = time.perf_counter() - t
    model, mcfg = scorer.model, scorer.model.config
    cfg = ScoreConfig(metrics=["ifd", "tss"], alternatives="random", k=args.k)

    examples = load_examples(args.data, args.rows)
    tmpdir = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    input_path = tmpdir / "rows.jsonl"
    write_alpaca(examples, input_path)

    chunks = plan_requests(input_path, cfg, scorer)
    requests = [r for c in chunks for r in c]
    prompts = [scorer.render_prompt(r.user) for r in requests]
    outputs = [r.output for r in requests]
    encoded = [scorer.encode(r) for r in requests]
    ok = [i for i, e in enumerate(encoded) if not isinstance(e, PassError)]
    tokens = sum(len(encoded[i][0]) for i in ok)
    out_tokens = sum(len(encoded[i][0]) - encoded[i][1] for i in ok)

    lm_bs = int(args.lm_eval_batch_size) if args.lm_eval_batch_size.isdigit() else args.lm_eval_batch_size
    lm = None
    if "lmeval" not in skip:
        import logging

        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        lm = make_hflm(scorer, lm_bs, args.lm_eval_max_batch_size)
    lm_split, lm_cont = lm_eval_splits(lm, requests, prompts, outputs, scorer) if lm else ([None] * len(requests), None)

    print(f"# bench_scoring  {datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {cpu_model()}, nproc={os.cpu_count()}, torch threads={torch.get_num_threads()}, "
          f"torch {torch.__version__}, python {platform.python_version()}")
    try:
        import lm_eval
        import transformers

        print(f"transformers {transformers.__version__}, lm-eval {getattr(lm_eval, '__version__', '?')}")
    except ImportError:
        pass
    print(f"model: {scorer.name} (SmolLM2-135M-Instruct fp32), loaded in {load_s:.1f}s (excluded)")
    print(f"rows: {len(examples)} from {args.data} ({', '.join(DATA_FILES)}); "
          f"config: metrics=ifd,tss alternatives=random k={args.k}")
    print(f"requests: {len(requests)} distinct passes ({len(ok)} computable), {tokens} tokens "
          f"({out_tokens} output tokens, {tokens - out_tokens} prompt tokens)")
    print(f"repeat: {args.repeat} (best run reported)\n", flush=True)

    # -- roofline ------------------------------------------------------------------------
    facts = cpu_facts()
    fma, how = fma_peak(facts)
    print(f"CPU: {facts['model']} (family {facts['family']}, model {facts['model_number']}); "
          f"SIMD: {' '.join(facts['flags'])}")
    print(f"fp32 FMA peak: {fma:.0f} GFLOP/s ({how})" if fma else f"fp32 FMA peak: unknown ({how})")
    with Usage(args.threads) as usage_mm:
        mm_table, peak, layer_rate = matmul_roofline(mcfg)
    n_nonemb = non_embedding_params(model)
    fpt = 2.0 * n_nonemb
    head_fpt = 2.0 * mcfg.vocab_size * mcfg.hidden_size * out_tokens / max(tokens, 1)
    attn_fpt = attention_flops(mcfg, [len(encoded[i][0]) for i in ok]) / max(tokens, 1)
    roof = peak * 1e9 / fpt
    roof_head = peak * 1e9 / (fpt + attn_fpt + head_fpt)
    print("fp32 GEMM rate per exact path, GFLOP/s (torch, best of several runs):")
    print(fmt_table(["shape", *layer_rate], mm_table))
    print("one layer's linears, flop-weighted: " + ", ".join(f"{p} {r:.0f}" for p, r in layer_rate.items()))
    print(f"roofline = the best measured rate = {peak:.1f} GFLOP/s"
          + (f" ({100 * peak / fma:.0f}% of the FMA peak)" if fma else ""))
    print(f"non-embedding params = {n_nonemb:,}; "
          f"flops/token = 2 x non-embedding params = {fpt / 1e6:.1f} MFLOP "
          f"-> roofline {roof:.0f} tokens/s ({usage_mm.line()})")
    print(f"+ causal attention over these passes' lengths = +{attn_fpt / 1e6:.1f} MFLOP/token; "
          f"+ lm_head on output tokens only (2 x vocab x hidden x output/total tokens) = +{head_fpt / 1e6:.1f} "
          f"MFLOP/token\n-> flops/token a pass needs = {(fpt + attn_fpt + head_fpt) / 1e6:.1f} MFLOP "
          f"-> roofline {roof_head:.0f} tokens/s (the one ontask is held to)")
    with Usage(args.threads) as usage_seq:
        seq_rate, seq_n = sequence_rate(scorer)
    roof_seq = seq_rate * 1e9 / (fpt + attn_fpt + head_fpt)
    print(f"sustained: the model's {seq_n} linears in forward order at M=2048 (real weights) run at {seq_rate:.1f} "
          f"GFLOP/s ({100 * seq_rate / peak:.0f}% of the best single shape) -> sustained roofline {roof_seq:.0f} "
          f"tokens/s ({usage_seq.line()})")
    ceiling = None
    if scorer._fused is not None and "ceiling" not in skip:
        batches = plan_batches(scorer, [encoded[i] for i in ok])
        with Usage(args.threads) as usage_ceil:
            ceiling = plan_ceiling(scorer, batches)
        run_tokens = sum(b["tokens"] for b in batches)
        body_weights = sum(lin.in_features * lin.out_features for layer in scorer._fused.layers for lin in layer[:4])
        gemm_fl = sum(2.0 * b["tokens"] * body_weights + 2.0 * b["outputs"] * scorer._head.weight.numel()
                      for b in batches)
        per_pair = attention_flops(mcfg, [1])  # one (query, key) pair over every layer
        attn_fl = sum(per_pair * (b - a) * ((0 if c is None else len(c)) + (b - a + 1) / 2)
                      for bt in batches for (a, b), c in zip(bt["spans"], bt["context"]))
        ceil_s = ceiling["gemm_s"] + ceiling["attention_s"]
        roof_ceil = tokens / ceil_s
        print(f"ceiling of ontask's plan ({len(batches)} batches, {run_tokens} tokens run for {tokens} in the passes), "
              f"its work replayed alone with torch's kernels: GEMMs {ceiling['gemm_s']:.1f}s "
              f"({gemm_fl / ceiling['gemm_s'] / 1e9:.0f} GFLOP/s, {100 * gemm_fl / ceiling['gemm_s'] / 1e9 / peak:.0f}% "
              f"of the roofline rate), attention {ceiling['attention_s']:.1f}s ({attn_fl / ceiling['attention_s'] / 1e9:.0f}"
              f" GFLOP/s) -> {roof_ceil:.0f} tokens/s = {100 * roof_ceil / roof_head:.0f}% of the roofline, were "
              f"everything else free ({usage_ceil.line()})")
    from ontask.models.hf.gemm import cpu_vendor, pick_gemm

    print(f"ontask's scorer runs: {scorer.kernels}; gemm auto picks '{pick_gemm()}' on {cpu_vendor() or 'this CPU'}\n",
          flush=True)

    # -- warm-up (untimed, shared by all methods) ---------------------------------------
    with torch.inference_mode():
        ids = torch.tensor([encoded[ok[0]][0][:64]])
        for _ in range(3):
            model(ids)

    # -- methods, one after the other ---------------------------------------------------
    usage: dict[str, Usage] = {}
    print(f"running ontask run_score ...  (load average {os.getloadavg()[0]:.2f})", flush=True)
    with Usage(args.threads) as usage["ontask"]:
        onto = run_ontask(input_path, cfg, scorer, requests, args.repeat)
    man = onto["manifest"]
    if man["counts"]["passes_computed"] != len(requests):
        print(f"WARNING: run_score computed {man['counts']['passes_computed']} passes, "
              f"the plan has {len(requests)}")
    if man["tokens_computed"] != tokens:
        print(f"WARNING: run_score tokens_computed={man['tokens_computed']}, plan tokens={tokens}")
    print(f"  {onto['seconds']:.1f}s; {usage['ontask'].line()}", flush=True)

    eager = None
    if "eager" not in skip and scorer.kernels != "eager (transformers)":
        from ontask.models.embedded.weights import load_embedded_scorer as _load

        print("running ontask run_score with kernels eager (transformers' forward) ...", flush=True)
        with Usage(args.threads) as usage["eager"]:
            eager = run_ontask(input_path, cfg, _load(kernels="eager"), requests, args.repeat)
        print(f"  {eager['seconds']:.1f}s; {usage['eager'].line()}", flush=True)

    cherry = None
    if "cherry" not in skip:
        print("running (a) Cherry-style loop ...", flush=True)
        with Usage(args.threads) as usage["cherry"]:
            cherry = run_cherry(scorer, requests, lm_split, args.repeat)
        print(f"  {cherry['seconds']:.1f}s; {usage['cherry'].line()}", flush=True)

    lme = None
    if lm is not None:
        print(f"running (b) lm-eval HFLM.loglikelihood batch_size={lm_bs} ...", flush=True)
        with Usage(args.threads) as usage["lmeval"]:
            lme = run_lmeval(lm, prompts, outputs, args.repeat)
        if lm_bs == "auto":
            print(f"  auto-detected batch sizes: {getattr(lm, 'batch_sizes', {})}")
        print(f"  {lme['seconds']:.1f}s; {usage['lmeval'].line()}", flush=True)

    # -- table ---------------------------------------------------------------------------
    tok = man["tokens_computed"]
    base = tok / onto["seconds"]
    rows = []

    def add(name, passes, seconds):
        tps = tok / seconds
        rows.append([name, passes, tok, f"{seconds:.1f}", f"{tps:.0f}", f"{tps / base:.2f}x",
                     f"{100 * tps / roof:.0f}%", f"{100 * tps / roof_head:.0f}%", f"{100 * tps / roof_seq:.0f}%"])

    add(f"ontask run_score (end to end), {scorer.kernels}", man["counts"]["passes_computed"], onto["seconds"])
    score_s = man["timings"].get("score_s")
    if score_s:
        add("ontask scoring phase (run.json tokens_per_s)", man["counts"]["passes_computed"], score_s)
    if eager:
        add("ontask run_score, kernels eager (transformers)", eager["manifest"]["counts"]["passes_computed"],
            eager["seconds"])
    if cherry:
        add("(a) Cherry-style, 1 request/forward", len(ok), cherry["seconds"])
    if lme:
        add(f"(b) lm-eval HFLM.loglikelihood bs={lm_bs}", len(ok), lme["seconds"])
    rows.append(["roofline: best GEMM rate / flops a pass needs per token", "", "", "", f"{roof_head:.0f}",
                 f"{roof_head / base:.2f}x", f"{100 * roof_head / roof:.0f}%", "100%",
                 f"{100 * roof_head / roof_seq:.0f}%"])
    rows.append(["sustained roofline: the model's GEMM sequence rate / flops per token", "", "", "",
                 f"{roof_seq:.0f}", f"{roof_seq / base:.2f}x", f"{100 * roof_seq / roof:.0f}%",
                 f"{100 * roof_seq / roof_head:.0f}%", "100%"])
    if ceiling:
        rows.append(["ceiling: ontask's plan, its GEMMs + attention alone", "", "", "", f"{roof_ceil:.0f}",
                     f"{roof_ceil / base:.2f}x", f"{100 * roof_ceil / roof:.0f}%", f"{100 * roof_ceil / roof_head:.0f}%",
                     f"{100 * roof_ceil / roof_seq:.0f}%"])
    print()
    print(fmt_table(["method", "passes", "tokens", "seconds", "tokens/s", "x vs ontask",
                     "% of body-only roofline", "% of roofline", "% of sustained roofline"], rows))
    print("\nx vs ontask = tokens/s of the method / tokens/s of ontask run_score (end to end).")
    print(f"run.json tokens_per_s = {man['tokens_per_s']} (scoring phase only; timings {man['timings']})")

    st = onto["stats"]
    run = st.get("computed")
    print(f"ontask forward tokens: {st.get('tokens')} in its passes (HFScorer.stats, {st.get('batches')} batches, "
          f"{st.get('passes')} passes)" + (f"; {run} run through the body, shared prefixes once and padding "
                                           f"included ({100 * (run / st['tokens'] - 1):+.1f}% vs the passes' tokens)"
                                           if run and st.get("tokens") else ""))
    if lm is not None and isinstance(lm_bs, int):
        lpad = lmeval_padded_tokens(lm, prompts, outputs, lm_bs)
        print(f"lm-eval forward tokens: {lpad} padded (batches of {lm_bs}, longest first), "
              f"all with full-vocabulary logits + fp32 log_softmax")

    # -- agreement -------------------------------------------------------------------------
    o = onto["sums"]
    okset = set(ok)
    n_out = [len(encoded[i][0]) - encoded[i][1] if i in okset else None for i in range(len(requests))]
    print("\nagreement of summed output log-probs with ontask (max |diff| of the sum; per output token):")
    if cherry:
        d, per, n = max_abs_diff(cherry["sums"], o, range(len(requests)), n_out)
        print(f"  (a) Cherry-style: max |diff| = {d:.2e} ({per:.1e}/token) over {n} passes")
    if eager:
        d, per, n = max_abs_diff(eager["sums"], o, range(len(requests)), n_out)
        print(f"  ontask kernels eager: max |diff| = {d:.2e} ({per:.1e}/token) over {n} passes")
    adj = None
    if lme:
        same = [i for i in ok if lm_cont[i] == n_out[i] and lm_split[i] is not None]
        moved = [i for i in ok if lm_split[i] is not None and lm_cont[i] != n_out[i]]
        other = [i for i in ok if lm_split[i] is None]
        print(f"  (b) lm-eval: {len(same)} passes with the same output tokens, "
              f"{len(moved) + len(other)} with a different token count")
        if same:
            d, per, n = max_abs_diff(lme["sums"], o, same, n_out)
            print(f"      same tokens: max |diff| = {d:.2e} ({per:.1e}/token) over {n} passes")
        if moved:
            extra = sorted({lm_cont[i] - n_out[i] for i in moved})
            print(f"      {len(moved)} passes: lm-eval's continuation has {extra} more token(s) at the start: it "
                  "moves the context's trailing whitespace (the '\\n' after '<|im_start|>assistant') into the "
                  "continuation and scores it")
            if cherry:
                adj = [None if (o[i] is None or cherry["extra"][i] is None) else o[i] + cherry["extra"][i]
                       for i in range(len(requests))]
                d, per, n = max_abs_diff(lme["sums"], adj, moved, n_out)
                print(f"      after adding those tokens' log-probs (from the Cherry pass' logits) to ontask's "
                      f"sums: max |diff| = {d:.2e} ({per:.1e}/token) over {n} passes")
        if other:
            print(f"      {len(other)} passes: lm-eval's token sequence differs from ontask's (boundary merge); "
                  "not compared")

    if args.fp64_check > 0 and ok:
        idx = sorted(ok, key=lambda i: (-n_out[i], i))[: args.fp64_check]
        ref = fp64_reference(model, encoded, idx, lm_split)
        print(f"\nagainst a float64 reference (same model in float64, unbatched, untimed) on the {len(idx)} "
              f"passes with the longest outputs ({min(n_out[i] for i in idx)}-{max(n_out[i] for i in idx)} "
              "output tokens), max |diff| of the sum:")
        r_ont = {i: ref[i][0] for i in idx}
        cols = [("ontask", o, r_ont)]
        if eager:
            cols.append(("ontask kernels eager", eager["sums"], r_ont))
        if cherry:
            cols.append(("(a) Cherry-style", cherry["sums"], r_ont))
        if lme:
            cols.append(("(b) lm-eval (its own continuation tokens)", lme["sums"], {i: ref[i][1] for i in idx}))
        for name, vals, r in cols:
            ds = [abs(vals[i] - r[i]) for i in idx if vals[i] is not None and r[i] is not None]
            print(f"  {name}: {max(ds):.2e}" if ds else f"  {name}: n/a")

    # -- lossy modes (opt-in settings; never on by default) ------------------------------
    lossy = _lossy_modes(args.lossy, facts)
    if lossy:
        from ontask.models import load_scorer

        table = [["fp32 (exact)", f"{base:.0f}", "1.00x", "0", "0"]]
        for mode in lossy:
            s = load_scorer({"spec": "embedded", "dtype": mode})
            with Usage(args.threads) as usage[mode]:
                run = run_ontask(input_path, cfg, s, requests, args.repeat)
            dev = [abs(a / n - b / n) for a, b, n in zip(run["sums"], o, n_out) if None not in (a, b, n)]
            tps = tok / run["seconds"]
            table.append([f"{mode} (--model-option scorer.dtype={mode})", f"{tps:.0f}", f"{tps / base:.2f}x",
                          f"{max(dev):.4f}", f"{sorted(dev)[len(dev) // 2]:.4f}"])
        print("\nlossy modes, ontask run_score end to end on the same passes; deviation = |mean lp per "
              "pass - fp32's| (ROC AUC change: benchmarks/bench_auc.py --dtype MODE):")
        print(fmt_table(["mode", "tokens/s", "x vs fp32", "max |d lp|", "median |d lp|"], table))

    usage["roofline"] = usage_mm
    busy = [k for k, u in usage.items() if max(u.load0, u.load1) > u.threads + 1]
    if busy:
        print(f"\nWARNING: the load average exceeded torch threads + 1 during: {', '.join(busy)}; "
              "other processes were probably competing for the CPU: rerun on a quiet machine.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""GPU check of the transformers scorer (`hf:` / `ontask.models.hf.scorer`) at a real model size.

Run on the GPU machine, from the repository root (no `pip install -e .` needed, no internet):

    python benchmarks/bench_gpu.py

Expected runtime on one H100: about 1.5-3 minutes (model built and saved ~15-40 s, GPU
sections ~30-60 s, CPU fp32 section ~10-30 s, capped at --cpu-cap, 120 s). Smoke test on
a CPU-only machine (~50 s on 2 cores; the GPU sections then run on the CPU, labelled `cpu*`):

    .venv/bin/python benchmarks/bench_gpu.py --config small

What it measures, all in one process, printed as markdown:

1. Model: a random-weight causal LM with Qwen2.5-1.5B's configuration (hidden 1536,
   intermediate 8960, 28 layers, 12 heads, 2 KV heads, vocab 151936, rope_theta 1e6, tied
   embeddings), built in code (`Qwen2Config` + `AutoModelForCausalLM.from_config`), saved in
   bf16 with a byte-level BPE tokenizer trained in code on pseudo-words (8k tokens; the
   model's vocabulary is larger, the extra rows are never hit) and a Qwen-style ChatML
   template with a default system message (so the scorer's shared-prefix KV path runs).
   Loaded back by `load_hf_scorer(path, device=..., dtype=...)`, exactly as `hf:PATH` is.
2. Passes: --passes (64) `PassRequest(user, output)` of pseudo-words, prompts of 200-400
   tokens and outputs of 100-300 tokens (plus --cpu-passes (4) short passes for the CPU).
3. Agreement: the short passes scored one at a time by cuda-bf16, cuda-fp32 and cpu-fp32
   (the reference), and all in one call ("batched": one batch, the chat template's common
   prefix run once and its KV cache shared, the scorer's other code path); per pass
   |difference of mean log-prob per output token| (max, median) and |difference of summed
   log-prob| (max); also cuda-bf16 vs cuda-fp32 on all passes (batched, batch_tokens 65536
   vs 16384).
   Random weights give near-uniform distributions, so real models may differ more in bf16.
4. Throughput: cuda-bf16 on all passes at batch_tokens 4096 / 16384 / 65536 (one warm-up,
   then --repeat timed runs, median; torch.cuda.synchronize around each), tokens/s where
   tokens = prompt + output tokens of every pass (tokenisation included in the timing),
   against the bf16 dense roofline: FLOP/token = 2 x parameters (embeddings counted once),
   achieved TFLOP/s and % of peak (table by GPU name, or --peak-tflops). A second, tighter
   FLOP count (body on every token, vocabulary head only on output tokens, which is what
   the scorer computes) and a raw body forward on one dense batch (no scorer) are printed
   for reference, with peak GPU memory per setting.
5. Machine: CPU model (/proc/cpuinfo), GPU name, torch / transformers versions, TF32 flags.

Imports: torch, transformers (and its `tokenizers`) and three ontask modules loaded around
the package `__init__`s (which pull in pydantic, openai, ... ): `ontask.models.base`,
`ontask.models.local.weights`, `ontask.models.hf.scorer` (+ `ontask.models.local.tokenized`,
which the scorer imports). If pydantic is missing, a stub is registered for `base.py`'s one
type annotation.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

CONFIGS = {
    "qwen2.5-1.5b": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, rope_theta=1_000_000.0, tie_word_embeddings=True,
        max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu",
    ),
    "small": dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=None, rope_theta=1_000_000.0, tie_word_embeddings=True,
        max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu",
    ),
}

# Dense bf16 tensor-core peak (no sparsity), TFLOP/s; first match on the device name wins.
PEAK_BF16 = [
    ("H100 PCIE", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),   # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
]

SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + SYSTEM + "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# -- imports --------------------------------------------------------------------------------

def import_ontask():
    """(base, weights, scorer) modules, without running `ontask.models`' package __init__s."""
    sys.path.insert(0, str(SRC))
    import ontask  # noqa: F401  (its __init__ only sets __version__)

    for name in ("ontask.models", "ontask.models.local", "ontask.models.hf"):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(SRC.joinpath(*name.split(".")))]
            sys.modules[name] = pkg
    try:
        import pydantic  # noqa: F401
    except ImportError:  # base.py uses BaseModel only in a (lazy) annotation
        stub = types.ModuleType("pydantic")
        stub.BaseModel = object
        sys.modules["pydantic"] = stub
        print("> pydantic not installed: a stub stands in for base.py's annotation")
    import importlib

    base = importlib.import_module("ontask.models.base")
    weights = importlib.import_module("ontask.models.local.weights")
    scorer = importlib.import_module("ontask.models.hf.scorer")
    return base, weights, scorer


# -- machine --------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return f"{names[0]} x {len(names)} logical CPUs" if names else "unknown"


def peak_for(name: str) -> float | None:
    up = name.upper()
    for key, tf in PEAK_BF16:
        if key in up:
            return tf
    return None


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- model and tokenizer --------------------------------------------------------------------

def pseudo_words(rng: random.Random, n: int) -> list[str]:
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
              "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io"]
    codas = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck"]
    words: set[str] = set()
    while len(words) < n:
        k = rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(k)))
    return sorted(words)


def zipf_sampler(rng: random.Random, words: list[str]):
    weights = [1.0 / (r + 1) ** 0.9 for r in range(len(words))]
    order = words[:]
    rng.shuffle(order)

    def draw(k: int) -> list[str]:
        return rng.choices(order, weights=weights, k=k)

    return draw


def build_tokenizer(words: list[str], draw, vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [" ".join(draw(40)) + "." for _ in range(3000)] + [SYSTEM, "system user assistant"] * 20
    tk.train_from_iterator(corpus, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model_folder(out: Path, config_name: str, tok, *, seed: int, build_device: str) -> dict:
    """Random-weight model of `config_name` + `tok`, saved (bf16) as a transformers folder."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    spec = dict(CONFIGS[config_name])
    if spec["vocab_size"] is None:
        spec["vocab_size"] = len(tok)
    assert spec["vocab_size"] >= len(tok), "the model's vocabulary must cover the tokenizer's"
    cfg = Qwen2Config(**spec, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.pad_token_id, use_sliding_window=False)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.device(build_device):
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        except TypeError:  # transformers < 4.56 spells it torch_dtype
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    model = model.to(torch.bfloat16)
    sync(build_device)
    t_build = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    embed = model.get_input_embeddings().weight.numel()
    t0 = time.perf_counter()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    t_save = time.perf_counter() - t0
    del model
    if build_device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"params": params, "embed": embed, "vocab": spec["vocab_size"], "hidden": spec["hidden_size"],
            "layers": spec["num_hidden_layers"], "build_s": t_build, "save_s": t_save}


# -- passes ---------------------------------------------------------------------------------

def make_passes(PassRequest, tok, draw, rng: random.Random, n: int, prompt_range, output_range):
    """n passes whose user turn / output have about the token counts drawn from the ranges."""
    cache: dict[str, int] = {}

    def ntok(piece: str) -> int:
        if piece not in cache:
            cache[piece] = len(tok(piece, add_special_tokens=False)["input_ids"])
        return cache[piece]

    def text(target: int) -> str:
        parts, count, since_stop = [], 0, 0
        while count < target:
            w = draw(1)[0]
            piece = (" " if parts else "") + (w.capitalize() if since_stop == 0 else w)
            parts.append(piece)
            count += ntok(piece)
            since_stop += 1
            if since_stop >= rng.randint(8, 16) and count < target:
                parts.append(".")
                count += 1
                since_stop = 0
        return "".join(parts) + "."

    return [PassRequest(text(rng.randint(*prompt_range)), text(rng.randint(*output_range))) for _ in range(n)]


# -- scoring --------------------------------------------------------------------------------

def load(scorer_mod, weights_mod, folder: Path, device: str, dtype: str, **kw):
    import torch

    sync(device)
    t0 = time.perf_counter()
    s = scorer_mod.load_hf_scorer(folder, device=device, dtype=dtype, **kw)
    sync(device)
    dt = time.perf_counter() - t0
    p = next(s.model.parameters())
    want = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    if p.dtype != want or p.device.type != torch.device(device).type:
        raise SystemExit(f"load_hf_scorer(device={device}, dtype={dtype}) gave weights on {p.device} in {p.dtype}")
    return s, dt


def unload(weights_mod, *scorers) -> None:
    import gc

    import torch

    weights_mod.forget_loaded()
    for s in scorers:
        if s is not None:
            s.model = s._body = s._head = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def score_each(scorer, passes, *, cap_s: float | None = None):
    """Score passes one request per call (same batching on every device); stop after cap_s."""
    out, t0 = [], time.perf_counter()
    for p in passes:
        if cap_s is not None and out and time.perf_counter() - t0 > cap_s:
            break
        out.append(scorer.score([p])[0])
    return out, time.perf_counter() - t0


def ok_results(results, PassResult):
    bad = [r for r in results if not isinstance(r, PassResult)]
    if bad:
        raise SystemExit(f"{len(bad)} pass(es) failed: {bad[:3]}")
    return results


def agreement(a, b) -> dict:
    n = min(len(a), len(b))
    mean_d = [abs(a[i].mean_logprob - b[i].mean_logprob) for i in range(n)]
    sum_d = [abs(a[i].sum_logprob - b[i].sum_logprob) for i in range(n)]
    assert all(a[i].n_output == b[i].n_output for i in range(n)), "different output token counts"
    return {"n": n, "max_mean": max(mean_d), "med_mean": statistics.median(mean_d), "max_sum": max(sum_d),
            "mean_lp": statistics.fmean(r.mean_logprob for r in b[:n])}


def plan_shape(scorer, passes, batch_tokens: int) -> tuple[int, int, int]:
    """(batches, real tokens, padded tokens) of the scorer's plan at batch_tokens."""
    old = scorer.batch_tokens
    scorer.batch_tokens = batch_tokens
    try:
        _, encoded = scorer.encode_all(passes)
        batches = list(scorer._plan_batches(encoded))
    finally:
        scorer.batch_tokens = old
    real = sum(len(ids) for b in batches for _, ids, _ in b)
    padded = sum(len(b[0][1]) * len(b) for b in batches)
    return len(batches), real, padded


def throughput(scorer, passes, batch_tokens: int, repeat: int, device: str) -> dict:
    import torch

    scorer.batch_tokens = batch_tokens
    n_batches, real, padded = plan_shape(scorer, passes, batch_tokens)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    scorer.score(passes)  # warm-up (kernels, allocator)
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        res = scorer.score(passes)
        sync(device)
        times.append(time.perf_counter() - t0)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    t = statistics.median(times)
    return {"bt": batch_tokens, "batches": n_batches, "tokens": real, "pad": 1 - real / padded, "t": t,
            "t_min": min(times), "tps": real / t, "mem": mem, "results": res}


def raw_body(model, device: str, batch: int, length: int, vocab_used: int, repeat: int) -> dict:
    import torch

    ids = torch.randint(0, vocab_used, (batch, length), device=device)
    with torch.inference_mode():
        model.base_model(input_ids=ids, use_cache=False)
        times = []
        for _ in range(repeat):
            sync(device)
            t0 = time.perf_counter()
            model.base_model(input_ids=ids, use_cache=False)
            sync(device)
            times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"tokens": batch * length, "t": t, "tps": batch * length / t}


# -- main -----------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="qwen2.5-1.5b")
    ap.add_argument("--passes", type=int, default=64)
    ap.add_argument("--prompt-tokens", default="200,400", help="min,max tokens of a pass's user turn")
    ap.add_argument("--output-tokens", default="100,300", help="min,max tokens of a pass's output")
    ap.add_argument("--batch-tokens", default="4096,16384,65536")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed runs per setting, median reported (default 3 on a GPU, 1 in CPU smoke mode)")
    ap.add_argument("--cpu-passes", type=int, default=4, help="short passes for the 3-way agreement check")
    ap.add_argument("--cpu-cap", type=float, default=120.0, help="seconds: no new CPU pass is started after this")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the GPU (overrides the table)")
    ap.add_argument("--tokenizer-vocab", type=int, default=8192)
    ap.add_argument("--workdir", default=None, help="folder for the saved model (default: a temp dir, removed)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t_start = time.perf_counter()

    import torch
    import transformers

    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    base, weights, scorer_mod = import_ontask()
    PassRequest, PassResult = base.PassRequest, base.PassResult

    cuda = torch.cuda.is_available()
    gpu_name = torch.cuda.get_device_name() if cuda else None
    print("# ontask GPU scorer benchmark\n")
    print(f"- config: `{args.config}`")
    print(f"- CPU: {cpu_model()}; torch threads {torch.get_num_threads()}")
    print(f"- GPU: {gpu_name or 'none'}" + (f" (CUDA {torch.version.cuda}, "
          f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)" if cuda else ""))
    print(f"- torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}")
    print(f"- TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn {torch.backends.cudnn.allow_tf32}; "
          f"float32 matmul precision `{torch.get_float32_matmul_precision()}`")
    tv = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
    if tv < (4, 56):
        print(f"- WARNING: transformers {transformers.__version__} < 4.56: weights.py passes `dtype=` to "
              "from_pretrained, which older versions do not accept (pyproject pins >=4.56)")
    if not cuda:
        print("\n**CUDA is not available: the cuda-bf16 / cuda-fp32 sections are skipped.**")
        if args.config == "small":
            print("**Smoke mode (--config small): those sections run on the CPU instead, "
                  "labelled `cpu*`, to exercise the code; their numbers mean nothing for a GPU.**")
    print()

    gpu = "cuda" if cuda else ("cpu" if args.config == "small" else None)
    if args.repeat is None:
        args.repeat = 3 if cuda else 1
    gpu_label = "cuda" if cuda else "cpu*"

    rng = random.Random(args.seed)
    words = pseudo_words(rng, 4000)
    draw = zipf_sampler(rng, words)
    tok = build_tokenizer(words, draw, args.tokenizer_vocab)
    own_dir = args.workdir is None
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="ontask-bench-gpu-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        try:  # on the GPU: random init of 1.5 B parameters takes seconds there, minutes on some CPUs
            info = build_model_folder(folder, args.config, tok, seed=args.seed, build_device="cuda" if cuda else "cpu")
        except Exception as e:  # noqa: BLE001
            if not cuda:
                raise
            print(f"> building on cuda failed ({type(e).__name__}: {e}); building on the CPU")
            info = build_model_folder(folder, args.config, tok, seed=args.seed, build_device="cpu")
        size = sum(f.stat().st_size for f in folder.iterdir()) / 2**30
        params, embed = info["params"], info["embed"]
        print("## Model\n")
        print(f"- Qwen2 random weights: {info['layers']} layers, hidden {info['hidden']}, vocab {info['vocab']} "
              f"(tokenizer {len(tok)}); built in {info['build_s']:.1f} s, saved (bf16, {size:.2f} GiB) "
              f"in {info['save_s']:.1f} s to `{folder}`")
        print(f"- parameters: {params / 1e9:.3f} B ({params:,}; embeddings {embed / 1e6:.1f} M, tied), "
              f"non-embedding {(params - embed) / 1e9:.3f} B")

        pr = tuple(int(x) for x in args.prompt_tokens.split(","))
        orng = tuple(int(x) for x in args.output_tokens.split(","))
        passes = make_passes(PassRequest, tok, draw, rng, args.passes, pr, orng)
        short = make_passes(PassRequest, tok, draw, rng, args.cpu_passes, (40, 80), (20, 40))

        # ---- cuda bf16: agreement passes, throughput ------------------------------------
        res: dict[str, list] = {}
        tp_rows, raw, tp32 = [], None, None
        if gpu:
            s, t_load = load(scorer_mod, weights, folder, gpu, "bf16")
            _, enc = s.encode_all(passes)
            n_out = sum(len(ids) - st for _, ids, st in enc)
            n_all = sum(len(ids) for _, ids, _ in enc)
            print(f"- passes: {len(enc)} x mean {n_all / len(enc):.0f} tokens (output {n_out / len(enc):.0f}); "
                  f"{n_all:,} tokens in all; short passes for the CPU: {len(short)}")
            print(f"- {gpu_label}-bf16 load: {t_load:.1f} s; attention `{s.model.config._attn_implementation}`\n")
            res["bf16_short"] = ok_results(score_each(s, short)[0], PassResult)
            res["bf16_short_b"] = ok_results(s.score(short), PassResult)
            for bt in (int(x) for x in args.batch_tokens.split(",")):
                row = throughput(s, passes, bt, args.repeat, gpu)
                ok_results(row.pop("results"), PassResult)
                tp_rows.append(row)
            s.batch_tokens = 65536
            res["bf16_all"] = ok_results(s.score(passes), PassResult)
            raw = raw_body(s.model, gpu, 16 if args.config != "small" else 4, 1024, len(tok), args.repeat)
            unload(weights, s)

            # ---- cuda fp32 --------------------------------------------------------------
            s, t_load32 = load(scorer_mod, weights, folder, gpu, "fp32")
            res["fp32_short"] = ok_results(score_each(s, short)[0], PassResult)
            res["fp32_short_b"] = ok_results(s.score(short), PassResult)
            tp32 = throughput(s, passes, 16384, 1, gpu)
            res["fp32_all"] = ok_results(tp32.pop("results"), PassResult)
            unload(weights, s)
        else:
            print(f"- short passes for the CPU: {len(short)}\n")

        # ---- cpu fp32 (reference) ---------------------------------------------------------
        s, t_loadc = load(scorer_mod, weights, folder, "cpu", "fp32")
        cpu_res, t_cpu = score_each(s, short, cap_s=args.cpu_cap)
        res["cpu_short"] = ok_results(cpu_res, PassResult)
        _, enc_c = s.encode_all(short[: len(cpu_res)])
        cpu_tokens = sum(len(ids) for _, ids, _ in enc_c)
        seqs_c = [ids for _, ids, _ in enc_c]
        prefix = scorer_mod.common_prefix(seqs_c, limit=min(st for _, _, st in enc_c)) if len(seqs_c) > 1 else 0
        res["cpu_short_b"] = ok_results(s.score(short[: len(cpu_res)]), PassResult) if len(cpu_res) > 1 else []
        unload(weights, s)

        # ---- report -------------------------------------------------------------------------
        print("## Agreement (sum log-prob per pass; reference cpu-fp32, one pass per call)\n")
        print(f"cpu-fp32: load {t_loadc:.1f} s; {len(cpu_res)}/{len(short)} short passes, {cpu_tokens} tokens in "
              f"{t_cpu:.1f} s ({cpu_tokens / t_cpu:.0f} tokens/s)"
              + (f"; stopped at the {args.cpu_cap:.0f} s cap" if len(cpu_res) < len(short) else "") + ". "
              f"`batched` = the short passes in one score() call: one batch whose common prefix "
              f"({prefix} tokens; shared when >= {scorer_mod.MIN_SHARED_PREFIX}) runs once, its KV cache reused.\n")
        print("| pair | passes | max abs diff mean lp/token | median abs diff mean lp/token | max abs diff sum lp "
              "| mean lp/token (ref) |")
        print("|---|---:|---:|---:|---:|---:|")
        pairs = []
        if gpu:
            pairs += [(f"{gpu_label}-bf16 vs cpu-fp32", res["bf16_short"], res["cpu_short"]),
                      (f"{gpu_label}-fp32 vs cpu-fp32", res["fp32_short"], res["cpu_short"]),
                      (f"{gpu_label}-bf16 batched vs cpu-fp32", res["bf16_short_b"], res["cpu_short"]),
                      (f"{gpu_label}-fp32 batched vs cpu-fp32", res["fp32_short_b"], res["cpu_short"])]
        if res["cpu_short_b"]:
            pairs.append(("cpu-fp32 batched vs cpu-fp32", res["cpu_short_b"], res["cpu_short"]))
        if gpu:
            pairs.append((f"{gpu_label}-bf16 vs {gpu_label}-fp32 (all {len(passes)} passes, batched)",
                          res["bf16_all"], res["fp32_all"]))
        for label, a, b in pairs:
            g = agreement(a, b)
            print(f"| {label} | {g['n']} | {g['max_mean']:.2e} | {g['med_mean']:.2e} | {g['max_sum']:.2e} "
                  f"| {g['mean_lp']:.3f} |")
        print()

        if gpu:
            name = gpu_name or "cpu"
            peak = args.peak_tflops or (peak_for(name) if cuda else None)
            flops_tok = 2 * params
            out_share = n_out / n_all
            flops_work = 2 * (params - embed) + 2 * embed * out_share  # head only on output positions
            print(f"## Throughput ({gpu_label}-bf16, {len(passes)} passes, {n_all:,} tokens; median of "
                  f"{args.repeat} runs after one warm-up)\n")
            print(f"- FLOP/token = 2 x params = {flops_tok / 1e9:.2f} GFLOP; as the scorer computes it "
                  f"(body on every token, vocab head on the {out_share:.0%} output tokens): "
                  f"{flops_work / 1e9:.2f} GFLOP; attention (~4 x layers x hidden x context) not counted")
            print(f"- peak bf16 dense: " + (f"{peak:.0f} TFLOP/s" + (" (--peak-tflops)" if args.peak_tflops
                  else f" (table, `{name}`)") if peak else "unknown (pass --peak-tflops)") + "\n")
            print("| batch_tokens | batches | padding | time s (min) | tokens/s | TFLOP/s (2N) | % peak (2N) "
                  "| % peak (work) | peak mem GiB |")
            print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

            def pct(tf):
                return f"{100 * tf / peak:.1f}%" if peak else "n/a"

            for r in tp_rows:
                tf = r["tps"] * flops_tok / 1e12
                tfw = r["tps"] * flops_work / 1e12
                print(f"| {r['bt']} | {r['batches']} | {r['pad']:.1%} | {r['t']:.3f} ({r['t_min']:.3f}) "
                      f"| {r['tps']:,.0f} | {tf:.1f} | {pct(tf)} | {pct(tfw)} | {r['mem']:.1f} |")
            rtf = raw["tps"] * 2 * (params - embed) / 1e12
            print(f"\n- reference, raw body forward (no scorer, no head) on one dense {raw['tokens']:,}-token "
                  f"batch: {raw['tps']:,.0f} tokens/s, {rtf:.1f} TFLOP/s (2 x non-embedding params), {pct(rtf)}")
            print(f"- {gpu_label}-fp32 (batch_tokens 16384, one run after warm-up): {tp32['tps']:,.0f} tokens/s, "
                  f"{tp32['t']:.3f} s, peak mem {tp32['mem']:.1f} GiB; load {t_load32:.1f} s")
        print(f"\nTotal wall time: {time.perf_counter() - t_start:.0f} s")
    finally:
        if own_dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

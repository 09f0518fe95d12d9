"""`vllm:PATH`: score passes with vLLM's in-process engine (`vllm.LLM`) on a CUDA GPU.

Why: on a GPU, vLLM's paged attention and continuous batching score a large corpus many
times faster than the transformers scorer, with no server to start. Targets the vLLM
offline API as of 0.33 (`LLM.generate` on token-id prompts, `SamplingParams.prompt_logprobs`,
`RequestOutput.prompt_logprobs` as a list of {token id: Logprob} or `FlatLogprobs`); the
same calls exist back to 0.6.

Exactness: prompts are tokenised here, with the model's own transformers tokenizer and
chat template, by the very code `HFScorer` uses (`tokenized.TokenizingScorer`), and sent as token ids.
So both scorers count the same output tokens, and differ only by kernels and dtype.
`SamplingParams(max_tokens=1, prompt_logprobs=0)` returns, for every prompt position, the
log-probability of the token actually there; the output's positions are summed.

vLLM is optional and GPU-only: nothing here imports it until an engine is built, so
`import ontask` never pulls it in, and a missing vLLM or GPU is a clear `VLLMUnavailable`.
The conversion functions (`pass_outcome`, `scoring_sampling_kwargs`, `vllm_problem`) are
pure, so they are tested on any machine with data shaped like vLLM's outputs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..base import OnResults, PassError, PassOutcome, PassRequest, PassResult, fingerprint_of
from ..local.tokenized import TokenizingScorer

INSTALL_HINT = "vllm:PATH needs vLLM and a CUDA GPU: pip install 'ontask[vllm]'"
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's own default; lower it to share a GPU between engines


class VLLMUnavailable(ImportError, RuntimeError):
    """vLLM is not installed, or there is no CUDA GPU to run it on.

    An ImportError (what it is) and a RuntimeError (what the CLI reports as a clean error).
    """


# -- availability ----------------------------------------------------------------------------
def vllm_problem(has_vllm: bool, has_cuda: bool) -> str | None:
    """Why `vllm:PATH` cannot run here, or None when it can (pure, so it is testable anywhere)."""
    if not has_vllm:
        return INSTALL_HINT
    if not has_cuda:
        return f"{INSTALL_HINT} (vLLM is installed, but torch sees no CUDA device here; use hf:PATH on a CPU)"
    return None


def require_vllm() -> Any:
    """The imported `vllm` module, or `VLLMUnavailable` with what to install."""
    has_vllm = importlib.util.find_spec("vllm") is not None
    has_cuda = False
    if has_vllm:
        import torch

        has_cuda = bool(torch.cuda.is_available())
    problem = vllm_problem(has_vllm, has_cuda)
    if problem:
        raise VLLMUnavailable(problem)
    import vllm

    return vllm


def vllm_version() -> str:
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# -- engines -----------------------------------------------------------------------------
_ENGINES: dict[tuple[Any, ...], Any] = {}


def load_engine(
    path: str | os.PathLike,
    *,
    dtype: str = "auto",
    max_length: int | None = None,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    seed: int = 0,
    enforce_eager: bool = False,
) -> Any:
    """A `vllm.LLM` for a local model folder, shared by every scorer and generator that asks
    for the same settings (one engine claims most of the GPU's memory; two would not fit)."""
    vllm = require_vllm()
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"vllm model folder not found: {folder} (ontask never downloads models)")
    key = (str(folder.resolve()), dtype, max_length, float(gpu_memory_utilization), seed, enforce_eager)
    if key not in _ENGINES:
        _ENGINES[key] = vllm.LLM(
            model=str(folder), tokenizer=str(folder), dtype=dtype, max_model_len=max_length,
            gpu_memory_utilization=gpu_memory_utilization, seed=seed, enforce_eager=enforce_eager,
        )
    return _ENGINES[key]


def engine_facts(llm: Any, requested_dtype: str) -> tuple[str, int | None]:
    """(resolved dtype, context length) of a built engine, read defensively across versions."""
    config = getattr(getattr(llm, "llm_engine", None), "model_config", None) or getattr(llm, "model_config", None)
    dtype = str(getattr(config, "dtype", None) or requested_dtype)
    length = getattr(config, "max_model_len", None)
    return dtype, int(length) if length else None


def load_chat_tokenizer(path: str | os.PathLike) -> Any:
    """The model folder's transformers tokenizer, which must carry a chat template.

    Loaded before the engine, so a wrong folder fails in a second, not after a GPU warm-up.
    """
    from transformers import AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"vllm model folder not found: {folder} (ontask never downloads models)")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        raise ValueError(f"{folder}: the tokenizer has no chat_template; vllm:PATH renders every prompt with it")
    return tokenizer


def engine_identity(path: str | os.PathLike, tokenizer: Any, dtype: str) -> dict[str, Any]:
    """What changes results: the weights (as `hf:` identifies them), template, dtype, backend."""
    from ..hf.scorer import weights_identity

    folder = Path(path)
    return {
        "model": str(folder.resolve()),
        **weights_identity(folder),
        "template": hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16],
        "dtype": dtype,
        "backend": "vllm",
    }


# -- pure conversions ------------------------------------------------------------------------
def scoring_sampling_kwargs() -> dict[str, Any]:
    """SamplingParams for one scoring pass: the prompt's own log-probs, one throwaway token.

    `prompt_logprobs=0` returns only the logprob of the token actually at each position
    (no top-k alternatives to build and ship); `detokenize=False` skips decoding them.
    """
    return {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0, "detokenize": False}


def _logprob_value(entry: Any) -> float | None:
    """A `Logprob` object, a {"logprob": x} dict (the server's JSON) or a bare number."""
    if entry is None:
        return None
    value = entry.get("logprob") if isinstance(entry, Mapping) else getattr(entry, "logprob", entry)
    return float(value) if isinstance(value, (int, float)) else None


def pass_outcome(
    prompt_logprobs: Sequence[Mapping[int, Any] | None] | None,
    ids: Sequence[int],
    start: int,
    echoed_ids: Sequence[int] | None = None,
) -> PassOutcome:
    """Sum the logprobs of output tokens `ids[start:]` from vLLM's `RequestOutput.prompt_logprobs`.

    `prompt_logprobs[j]` maps token ids to the log-probability at position j given ids[:j]
    (entry 0 is None: the first token has no context). Anything that does not line up with
    the ids sent is a `PassError`, never a silently wrong sum.
    """
    if prompt_logprobs is None:
        return PassError("vLLM returned no prompt_logprobs")
    if len(prompt_logprobs) != len(ids) or (echoed_ids is not None and list(echoed_ids) != list(ids)):
        return PassError(f"vLLM scored different tokens than sent ({len(prompt_logprobs)} log-probs for {len(ids)} tokens)")
    if start < 1:
        return PassError("the prompt has no tokens, so the first output token has no context")
    picked: list[float] = []
    for j in range(start, len(ids)):
        position = prompt_logprobs[j]
        value = _logprob_value(position.get(ids[j]) if position is not None else None)
        if value is None or not math.isfinite(value):
            return PassError(f"vLLM returned no finite log-prob for output token {j - start}")
        picked.append(value)
    if not picked:
        return PassError("output has no tokens")
    return PassResult(math.fsum(picked), len(picked), start)


# -- the scorer --------------------------------------------------------------------------
class VLLMScorer(TokenizingScorer):
    """Implements `Scorer` with an in-process `vllm.LLM` (one `generate` call per `score`)."""

    def __init__(self, llm: Any, tokenizer: Any, *, name: str, identity: dict[str, Any], max_length: int) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = int(max_length)
        self._identity = dict(identity)
        self._fingerprint = fingerprint_of(self._identity)
        self.stats = {"calls": 0, "passes": 0, "tokens": 0}

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self._fingerprint, "vllm": vllm_version(), **self._identity}

    def score(self, requests: Sequence[PassRequest], on_results: OnResults | None = None) -> list[PassOutcome]:
        from vllm import SamplingParams

        results, todo = self.encode_all(requests, on_results)  # tokenised exactly as HFScorer does
        if todo:
            params = SamplingParams(**scoring_sampling_kwargs())
            outputs = generate_each(self.llm, [ids for _, ids, _ in todo], [params] * len(todo))
            for (i, ids, start), out in zip(todo, outputs, strict=True):
                if isinstance(out, Exception):
                    results[i] = PassError(f"vLLM rejected this pass: {type(out).__name__}: {out}")
                else:
                    results[i] = pass_outcome(out.prompt_logprobs, ids, start, getattr(out, "prompt_token_ids", None))
            self.stats["calls"] += 1
            self.stats["passes"] += len(todo)
            self.stats["tokens"] += sum(len(ids) for _, ids, _ in todo)
            if on_results:  # vLLM schedules the whole call itself: one report at its end
                on_results([(i, results[i]) for i, _, _ in todo])  # type: ignore[misc]
        return results  # type: ignore[return-value]


def load_vllm_scorer(
    path: str | os.PathLike,
    *,
    dtype: str = "auto",
    max_length: int | None = None,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    name: str | None = None,
) -> VLLMScorer:
    """`vllm:PATH` (a local folder; no hub access on purpose) as a scorer."""
    llm, tokenizer, identity, length = load_model(path, dtype=dtype, max_length=max_length,
                                                  gpu_memory_utilization=gpu_memory_utilization)
    # One position is kept for the token vLLM must generate after the scored prompt.
    return VLLMScorer(llm, tokenizer, name=name or f"vllm:{path}", identity=identity, max_length=length - 1)


def load_model(path: str | os.PathLike, *, dtype: str, max_length: int | None,
               gpu_memory_utilization: float) -> tuple[Any, Any, dict[str, Any], int]:
    """(engine, chat tokenizer, identity, context length) for `vllm:PATH`, scorer or generator.
    The tokenizer is loaded first, so a wrong folder fails in a second, not after GPU warm-up."""
    require_vllm()
    tokenizer = load_chat_tokenizer(path)
    llm = load_engine(path, dtype=dtype, max_length=max_length, gpu_memory_utilization=gpu_memory_utilization)
    resolved, context = engine_facts(llm, dtype)
    return llm, tokenizer, engine_identity(path, tokenizer, resolved), max_length or context or 2048


def generate_each(llm: Any, prompts: list[list[int]], params: list[Any]) -> list[Any]:
    """`RequestOutput`s aligned with the token-id `prompts`; an Exception in place of each one
    vLLM rejected (it rejects a whole call for one invalid request: then one by one)."""
    if not prompts:
        return []
    batch = [{"prompt_token_ids": ids} for ids in prompts]
    try:
        return list(llm.generate(batch, params, use_tqdm=False))
    except Exception:
        outputs: list[Any] = []
        for prompt, p in zip(batch, params, strict=True):
            try:
                outputs.append(llm.generate([prompt], p, use_tqdm=False)[0])
            except Exception as exc:  # this request only
                outputs.append(exc)
        return outputs

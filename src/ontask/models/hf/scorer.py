"""Local transformers scorer: batched, length-sorted, output-only vocabulary projection.

How it is fast (in the spirit of lm-evaluation-harness's loglikelihood):
- requests are tokenised once, sorted by length and packed into batches under a token
  budget, so padding is small;
- the transformer body runs on the whole sequence, but the vocabulary projection and
  log-softmax (the widest matmul of a small model) run only on the positions that
  predict output tokens;
- prefixes shared by passes run once: on the fused CPU forward, passes are sorted by their
  tokens, so the passes that open with the same header and instruction (TSS's
  alternatives are other rows' instructions) share a batch, and the batch is one packed
  forward in which each shared prefix is a segment its passes attend to (`prefixes.py`,
  `FusedBody.segments`: 103k -> 84k tokens run on 100 Self-Instruct rows, no padding);
  elsewhere, a prefix common to a whole batch (the chat header) runs once;
- on the CPU in fp32, Llama-family bodies run a fused forward (`fused.py`: fewer passes
  over memory, wider GEMMs, on the CPU's fastest exact GEMM path); `kernels: eager` turns
  it off, `gemm` picks the path;
- the log-softmax over the vocabulary runs on slices of rows small enough to stay in the
  CPU's cache (four passes over a [1024 x vocab] buffer in memory cost more than its GEMM).

Output tokens are located exactly: the prompt is tokenised alone and must be a prefix of
the tokenised prompt + output; if the tokenizer merges across the boundary, the output is
tokenised on its own and appended, so the split is still exact by construction.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..base import OnResults, PassOutcome, PassRequest, PassResult, fingerprint_of
from ..local.tokenized import TokenizingScorer
from ..local.weights import load_causal_lm, model_device
from .fused import select_kernels
from .prefixes import Tree, common_length, tree

MIN_SHARED_PREFIX = 8  # below this, sharing a prefix costs more than it saves
# Tokens per batch by default on the fused CPU forward (distinct tokens: shared prefixes once),
# where ~1024 runs best: its activations stay in cache (SmolLM2-135M, 2 cores, measured on the
# padded plan: 1,258 tok/s at 1024, 1,268 at 768, 1,131 at 2048; on the packed plan 1024,
# 1536 and 2048 tie). Elsewhere 2048 padded tokens.
FUSED_BATCH_TOKENS = 1024
HEAD_ROWS = 1024  # positions per vocabulary GEMM (bounds the [positions x vocab] buffer)
SOFTMAX_ROWS = 16  # rows per log-softmax slice: 16 x 49k vocab x 4 B = 3 MB, cache-sized


class HFScorer(TokenizingScorer):
    """Scores passes with a transformers causal LM on CPU or GPU."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        identity: dict[str, Any],
        batch_tokens: int | None = None,
        max_length: int | None = None,
        share_prefix: bool = True,
        kernels: str = "auto",
        gemm: str = "auto",
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.share_prefix = share_prefix
        cfg = model.config
        self.max_length = max_length or int(getattr(cfg, "max_position_embeddings", 2048))
        self._softcap = getattr(cfg, "final_logit_softcapping", None)
        self._body = model.base_model
        self._head = model.get_output_embeddings()
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = model_device(model)  # inputs go where the weights are
        # The KV cache argument: `cache` in transformers >= 5.25 (`past_key_values` goes in 5.40), before: the old name.
        self._cache_arg = "cache" if "cache" in inspect.signature(self._body.forward).parameters else "past_key_values"
        self._identity = {
            **identity,
            "template": hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16],
            "dtype": str(next(model.parameters()).dtype),
            **({"device": self.device.type} if self.device.type != "cpu" else {}),
        }
        self._fingerprint = fingerprint_of(self._identity)
        self._fused, self.kernels = select_kernels(model, kernels, gemm)
        self.batch_tokens = batch_tokens or (FUSED_BATCH_TOKENS if self._fused is not None else 2048)
        # tokens: of the passes scored; computed: run through the body (shared prefixes once, padding included)
        self.stats = {"batches": 0, "tokens": 0, "passes": 0, "computed": 0}
        self._head_out: torch.Tensor | None = None

    # -- identity -----------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        # kernels are not in the fingerprint: they agree to float32 rounding, like batch sizes
        return {"name": self.name, "fingerprint": self._fingerprint, **self._identity, "kernels": self.kernels}

    # -- scoring --------------------------------------------------------------------
    def score(self, requests: Sequence[PassRequest], on_results: OnResults | None = None) -> list[PassOutcome]:
        try:
            return self._score(requests, on_results)
        finally:
            self._head_out = None  # the head's buffer lives for one call

    def _score(self, requests: Sequence[PassRequest], on_results: OnResults | None) -> list[PassOutcome]:
        results, encoded = self.encode_all(requests, on_results)
        if self._fused is not None and self.share_prefix:
            batches = (self._fused_batch(batch) for batch in self._fused_plan(encoded))
        else:
            batches = ([(i, res) for (i, _, _), res in zip(batch, self._forward(batch))]
                       for batch in self._plan_batches(encoded))
        for done in batches:
            for i, res in done:
                results[i] = res
            if on_results:
                on_results(done)
        return results  # type: ignore[return-value]

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """The vocabulary head on positions `h`, as float32. On the CPU in fp32 it writes into
        one buffer kept for the call: a fresh [1024 x vocab] result (200 MB for a 49k
        vocabulary) is new memory each time, and faulting its pages in made the head's
        GEMM ~30% slower (262 -> 332-364 GFLOP/s measured on the scorer's shapes)."""
        w = self._head.weight
        if self.device.type != "cpu" or w.dtype != torch.float32 or getattr(self._head, "bias", None) is not None:
            return self._head(h).float()
        if self._head_out is None or self._head_out.shape[0] < len(h):
            self._head_out = torch.empty(max(len(h), HEAD_ROWS), w.shape[0])
        return torch.mm(h, w.t(), out=self._head_out[: len(h)])

    def _plan_batches(self, encoded: list[tuple[int, list[int], int]]):
        """Longest first (a memory problem shows at once), packed under the token budget.

        Ties are broken by the original index so that the plan, and hence every float,
        depends only on the requests, not on dictionary or set order.
        """
        order = sorted(encoded, key=lambda e: (-len(e[1]), e[0]))
        batch: list[tuple[int, list[int], int]] = []
        for item in order:
            width = len(batch[0][1]) if batch else len(item[1])
            if batch and width * (len(batch) + 1) > self.batch_tokens:
                yield batch
                batch = []
            batch.append(item)
        if batch:
            yield batch

    def _fused_plan(self, encoded: list[tuple[int, list[int], int]]) -> Iterator[list[tuple[int, list[int], int]]]:
        """Passes in token order, so passes that open with the same header and instruction
        sit together, packed while the distinct tokens of a batch (`prefixes.tree`) stay
        within the budget (a single pass may exceed it).

        A batch depends only on the passes before it in this order, and each batch is
        committed as it finishes: a resumed call, given the passes not yet committed,
        plans the very batches that were not run, and computes the same floats."""
        batch: list[tuple[int, list[int], int]] = []
        for item in sorted(encoded, key=lambda e: (e[1], e[0])):
            if batch and _distinct_tokens([*batch, item]) > self.batch_tokens:
                yield batch
                batch = []
            batch.append(item)
        if batch:
            yield batch

    @torch.inference_mode()
    def _fused_batch(self, batch: list[tuple[int, list[int], int]]) -> list[tuple[int, PassResult]]:
        """One packed forward: each prefix the batch's passes share runs once, as a segment
        the passes continuing it see (`FusedBody.segments`); then the vocabulary head on the
        positions that predict output tokens."""
        seqs = [ids for _, ids, _ in batch]
        starts = [start for _, _, start in batch]
        shared = _shared_tree(batch)
        ids: list[int] = []
        positions: list[int] = []
        spans: list[tuple[int, int]] = []
        at_node: list[torch.Tensor] = []  # per node: indices of its tokens, its ancestors' first

        def segment(tokens: list[int] | tuple[int, ...], node: int) -> torch.Tensor | None:
            skip = shared.start(node)
            a = len(ids)
            ids.extend(tokens[skip:])
            positions.extend(range(skip, len(tokens)))
            spans.append((a, len(ids)))
            return at_node[node] if node >= 0 else None

        context = []
        for j, tokens in enumerate(shared.nodes):
            context.append(segment(tokens, shared.parent[j]))
            own = torch.arange(*spans[-1])
            at_node.append(own if context[-1] is None else torch.cat([context[-1], own]))
        first_pass = len(spans)
        for s, node in zip(seqs, shared.node_of):
            context.append(segment(s, node))
        hidden = self._fused.segments(torch.tensor(ids), torch.tensor(positions), spans, context)
        # the positions predicting output tokens: in pass b's own segment, from its output start - 1 on
        where = [spans[first_pass + b][0] + start - 1 - shared.start(node) + torch.arange(len(s) - start)
                 for b, (s, start, node) in enumerate(zip(seqs, starts, shared.node_of))]
        results = self._sum_logprobs(hidden[torch.cat(where)], seqs, starts)
        self.stats["computed"] += len(ids)
        return [(i, res) for (i, _, _), res in zip(batch, results)]

    @torch.inference_mode()
    def _forward(self, batch: list[tuple[int, list[int], int]]) -> list[PassResult]:
        seqs = [ids for _, ids, _ in batch]
        starts = [s for _, _, s in batch]
        prefix = shared_prefix(seqs, min(starts), MIN_SHARED_PREFIX) if self.share_prefix else 0
        ids = right_padded(seqs, prefix, self._pad_id).to(self.device)
        if self._fused is not None:
            shared = self._fused.prefix(torch.tensor([seqs[0][:prefix]])) if prefix else None
            hidden = self._fused(ids, shared)
        elif prefix:
            out = self._body(input_ids=torch.tensor([seqs[0][:prefix]], device=self.device), use_cache=True)
            pre = out["cache"] if "cache" in out else out.past_key_values  # transformers >= 5.25 names it cache
            pre.batch_repeat_interleave(len(seqs))
            hidden = self._body(input_ids=ids, **{self._cache_arg: pre}, use_cache=True).last_hidden_state
        else:
            hidden = self._body(input_ids=ids, use_cache=False).last_hidden_state
        self.stats["computed"] += ids.numel() + prefix

        # Positions (in `hidden`, shifted by the prefix) whose next token is an output token.
        rows = [b for b, (s, start) in enumerate(zip(seqs, starts)) for _ in range(len(s) - start)]
        cols = [c for s, start in zip(seqs, starts) for c in range(start - 1 - prefix, len(s) - 1 - prefix)]
        return self._sum_logprobs(hidden[torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)],
                                  seqs, starts)

    def _sum_logprobs(self, h: torch.Tensor, seqs: list[list[int]], starts: list[int]) -> list[PassResult]:
        """Each pass's summed log-prob of its output tokens, from `h`: the last hidden states
        at the positions predicting them, pass after pass. The vocabulary head runs on these
        positions only."""
        targets = [t for s, start in zip(seqs, starts) for t in s[start:]]
        owner = [b for b, (s, start) in enumerate(zip(seqs, starts)) for _ in range(len(s) - start)]
        tgt = torch.tensor(targets, device=self.device)
        token_lp = torch.empty(len(targets), dtype=torch.float64, device=self.device)  # one copy back, at the end
        for a in range(0, len(targets), HEAD_ROWS):
            logits = self._logits(h[a : a + HEAD_ROWS])
            if self._softcap:
                logits = torch.tanh(logits / self._softcap) * self._softcap
            step = SOFTMAX_ROWS if self.device.type == "cpu" else HEAD_ROWS  # a GPU wants it whole
            for c in range(0, len(logits), step):
                token_lp[a + c : a + c + step] = _target_logprobs(logits[c : c + step], tgt[a + c : a + c + step])
        sums = torch.zeros(len(seqs), dtype=torch.float64, device=self.device).index_add_(
            0, torch.tensor(owner, device=self.device), token_lp
        ).cpu()
        self.stats["batches"] += 1
        self.stats["passes"] += len(seqs)
        self.stats["tokens"] += sum(len(s) for s in seqs)
        return [
            PassResult(float(sums[b]), len(s) - start, start)
            for b, (s, start) in enumerate(zip(seqs, starts))
        ]


def _shared_tree(batch: list[tuple[int, list[int], int]]) -> Tree:
    """The prefixes a batch's passes share, each cut before its first output token's
    predictor (a pass keeps at least the position that predicts its first output token)."""
    return tree([ids for _, ids, _ in batch], [start - 1 for _, _, start in batch], MIN_SHARED_PREFIX)


def _distinct_tokens(batch: list[tuple[int, list[int], int]]) -> int:
    """Tokens a packed batch runs: its passes' tokens, each shared prefix counted once."""
    return _shared_tree(batch).tokens_run([ids for _, ids, _ in batch])


def _target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[targets], overwriting `logits` (the head's scratch).

    A float32 log-softmax computed the usual way drifts by ~1e-5 per token, ~1e-3 summed
    over a long output; a float64 copy of [positions x vocab] is slow, and so is a float64
    sum over it (a conversion per element: 40% of this function's time). So: the max and
    exp in float32, in place (each term exact to ~1e-7 relative, all <= 1); their sum in
    float32 by torch's cascade summation (relative error ~1e-7, measured against a float64
    sum: <= 2e-7 in lp per token, unbiased); the picked logit minus the max, and the log,
    in float64.
    """
    top = logits.amax(dim=-1, keepdim=True)
    picked = logits.gather(1, targets[:, None])[:, 0].double() - top[:, 0].double()
    sumexp = logits.sub_(top).exp_().sum(dim=-1)
    return picked - torch.log(sumexp.double())


def shared_prefix(seqs: list[list[int]], limit: int, minimum: int) -> int:
    """The tokens a batch runs once, before its rows: their common prefix (`common_prefix`,
    at most `limit`) when it is at least `minimum` long, else none."""
    prefix = common_prefix(seqs, limit) if len(seqs) > 1 else 0
    return prefix if prefix >= minimum else 0


def right_padded(seqs: list[list[int]], skip: int, pad_id: int) -> torch.Tensor:
    """The rows after their first `skip` tokens, right-padded, [rows, longest - skip].

    Right padding and no attention mask: under a causal mask a real token never sees the
    pads that follow it, so its hidden state is exact, and attention keeps the fast
    is_causal path instead of materialising a [batch, len, len] mask."""
    ids = torch.full((len(seqs), max(len(s) for s in seqs) - skip), pad_id, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s) - skip] = torch.tensor(s[skip:])
    return ids


def common_prefix(seqs: list[list[int]], limit: int) -> int:
    """Length of the longest common prefix, at most `limit` (keep >=1 token per row)."""
    n = max(min(limit, *(len(s) for s in seqs)) - 1, 0)  # leave one prompt token to predict from
    return min([n, *(common_length(seqs[0], s) for s in seqs[1:])])


def weights_identity(path: Path) -> dict[str, Any]:
    """Identity of a local model folder: config content plus weight file sizes and mtimes.

    Hashing multi-GB weights on every start would be slow; size + mtime errs towards
    recomputation (a touched file invalidates the cache) rather than towards stale hits.
    """
    files = sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".bin", ".gguf", ".pt"})
    config = (path / "config.json").read_text() if (path / "config.json").exists() else ""
    return {
        "config": hashlib.sha256(config.encode()).hexdigest()[:16],
        "weights": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files],
    }


def load_hf_scorer(path: str | os.PathLike, *, name: str | None = None, identity: dict | None = None,
                   device: str | None = None, dtype: str | None = None, **kw: Any) -> HFScorer:
    """Load `hf:PATH` (a local folder; no hub access on purpose) as a scorer on `device` in
    `dtype` (auto: the GPU in bf16 when there is one, else the CPU in fp32, exact to 1e-4);
    `kernels` and `gemm` as `HFScorer` takes them."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"hf model folder not found: {path} (ontask never downloads models)")
    model, tok = load_causal_lm(path, device=device, dtype=dtype)
    if not tok.chat_template:
        raise ValueError(f"{path}: the tokenizer has no chat_template; scores are defined over the chat template")
    ident = identity or {"model": str(path.resolve()), **weights_identity(path)}
    return HFScorer(model, tok, name=name or f"hf:{path}", identity=ident, **kw)



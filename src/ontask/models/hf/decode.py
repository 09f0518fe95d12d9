"""Greedy decoding on the fused CPU forward, with a key/value cache allocated once.

Why: generation is most of a local augment run (the demo spends ~90% of its time there),
and on a small model a decoding step should cost about one read of the weights. Through
transformers' `generate` a step of SmolLM2-135M took 60-80 ms at 6-10 rows: ~600
framework-level operations per step (five element-wise passes per RMSNorm, rotary's eight,
separate q/k/v/gate/up GEMMs), and the cache grown by `cat` at every step. Here a step is
the fused layers of `fused.FusedBody` (4 GEMMs per layer, norms folded into them) writing
its keys and values into slots of a cache sized for the whole answer.

It is transformers' greedy loop (`GenerationMixin._sample` with `do_sample=False`), kept
step for step so that the same logits processors see the same inputs: the processors
(repetition penalty, then the caller's) get the ids so far and the step's float32 logits;
the token is their argmax; a finished row gets the pad token; the loop ends when every row
has written a stop token or `max_new_tokens` are written. Prompts come left-padded with
their attention mask, and positions count real tokens only, as `generate` counts them.
Logits agree with `generate`'s to float32 rounding (tested step by step against the model's
own forward), so greedy text differs only where two tokens tie to ~1e-6.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .fused import FusedBody
from .gemm import Linear


FEW_ROWS = 3  # batches up to this many rows decode on `few_rows` when there is one


class FusedDecoder:
    """`generate(ids, mask, ...)` for a model whose body `FusedBody` computes.

    `few_rows`: a body on another GEMM path for batches of at most FEW_ROWS rows. On Intel
    CPUs MKL's matrix-vector kernels beat oneDNN's on one to three rows (SmolLM2-135M, 2
    cores: 36 vs 47 ms per step at one row, 40 vs 52 at two, 45 vs 54 at three; even at
    four), where oneDNN wins from there on (64 vs 89 ms at six rows against MKL's GEMM)."""

    def __init__(self, body: FusedBody, head: Any, softcap: float | None = None,
                 few_rows: FusedBody | None = None) -> None:
        self.softcap = softcap
        self.paths = {False: (body, Linear(head.weight, head.bias, body.gemm))}  # the head on the body's path
        if few_rows is not None and few_rows is not body:
            self.paths[True] = (few_rows, Linear(head.weight, head.bias, few_rows.gemm))
        self.head = self.paths[False][1]  # the one `logits` uses unless told otherwise

    def logits(self, normed: torch.Tensor, head: Linear | None = None) -> torch.Tensor:
        """float32 logits from hidden states after the body's final norm, [b, vocab]."""
        logits = (head or self.head)(normed).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, mask: torch.Tensor, *, max_new_tokens: int, processors: Any,
                 stop_ids: Sequence[int], pad_id: int) -> torch.Tensor:
        """Left-padded `ids` [b, w] (mask 1 on real tokens) followed by the new tokens, [b, w + steps]."""
        b, w = ids.shape
        body, head = self.paths.get(b <= FEW_ROWS, self.paths[False])
        capacity = w + max_new_tokens
        gqa = body.kv_heads != body.heads
        shape = (b, body.kv_heads, capacity, body.head_dim)
        keys = [torch.empty(shape) for _ in body.layers]
        values = [torch.empty(shape) for _ in body.layers]
        valid = torch.ones(b, capacity, dtype=torch.bool)
        valid[:, :w] = mask.bool()
        positions = (mask.long().cumsum(-1) - 1).clamp_(min=0)

        # Prefill: causal over real keys; a pad query sees itself, so no mask row is empty.
        seen = torch.ones(w, w, dtype=torch.bool).tril_() & valid[:, None, :w]
        seen |= torch.eye(w, dtype=torch.bool)
        seen = seen[:, None]

        def prefill(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
            keys[layer][:, :, :w] = k
            values[layer][:, :, :w] = v
            return F.scaled_dot_product_attention(q, k, v, attn_mask=seen, scale=scale, enable_gqa=gqa)

        x = body.embed(ids)
        turn = body.rotation(x, positions)
        for layer in range(len(body.layers)):
            x = body.block(x, layer, turn, prefill)
        logits = self.logits(body.final(x[:, -1]), head)

        out = torch.full((b, capacity), pad_id, dtype=torch.long)
        out[:, :w] = ids
        stops = torch.tensor(list(stop_ids), dtype=torch.long)
        bias = torch.zeros(b, 1, 1, capacity).masked_fill_(~valid[:, None, None], float("-inf"))
        unfinished = torch.ones(b, dtype=torch.bool)
        position = positions[:, -1:] + 1  # [b, 1]: the next token's position in each row
        for step in range(max_new_tokens):
            slot = w + step
            scores = processors(out[:, :slot], logits)
            token = torch.where(unfinished, scores.argmax(dim=-1), pad_id)
            out[:, slot] = token
            unfinished &= ~torch.isin(token, stops)
            if not bool(unfinished.any()) or step + 1 == max_new_tokens:
                return out[:, : slot + 1]
            logits = self._step(body, head, token, slot, position + step, keys, values, bias[..., : slot + 1])
        return out[:, :w]  # max_new_tokens == 0

    def _step(self, body: FusedBody, head: Linear, token: torch.Tensor, slot: int, position: torch.Tensor,
              keys: list[torch.Tensor], values: list[torch.Tensor], bias: torch.Tensor) -> torch.Tensor:
        """One token per row at cache slot `slot`: its keys and values are written there, and
        it attends to every valid slot up to it (`bias`: 0 or -inf per slot, [b, 1, 1, slot + 1]).
        The next logits, [b, vocab].

        The query heads that share a KV head are passed as that head's queries ([b, kv heads,
        group, d]): one position needs no causal mask, so this is exact, and attention reads
        the cache as it is, where `enable_gqa` would copy it to every query head first (the
        cache is as large as the weights at ~1,000 positions: 1.5x faster attention)."""
        b, h, kvh, d = token.shape[0], body.heads, body.kv_heads, body.head_dim

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
            keys[layer][:, :, slot] = k[:, :, 0]
            values[layer][:, :, slot] = v[:, :, 0]
            grouped = q.reshape(b, kvh, h // kvh, d)  # query head j * group + r reads KV head j, as repeat_kv does
            a = F.scaled_dot_product_attention(grouped, keys[layer][:, :, : slot + 1], values[layer][:, :, : slot + 1],
                                               attn_mask=bias, scale=scale)
            return a.reshape(b, h, 1, d)

        x = body.embed(token[:, None])
        turn = body.rotation(x, position)
        for layer in range(len(body.layers)):
            x = body.block(x, layer, turn, attend)
        return self.logits(body.final(x[:, -1]), head)

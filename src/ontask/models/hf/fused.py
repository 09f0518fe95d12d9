"""A fused forward of Llama-family bodies for exact fp32 scoring on the CPU.

Why: on a small model and a few CPU cores, transformers' eager forward spends a third of
its time outside the matrix products, in memory-bound element-wise passes over
[tokens x hidden] tensors: RMSNorm's five, rotary's eight (with two `cat`s), SiLU and the
gate product, the residual adds. This forward computes the same function in fewer passes:

- RMSNorm's weight is folded into the columns of the GEMM that follows it, so a norm is
  one reduction (`vector_norm`) and one scaling;
- q, k, v are one GEMM against the concatenated weights, gate and up another; the
  residual adds happen inside the GEMMs of o and down (`addmm`);
- rotary is one in-place complex multiplication: the rows of q's and k's weights are
  permuted within each head so that the pairs rotary rotates together, (i, i + d/2), sit
  side by side; q.k is unchanged by a permutation applied to both;
- attention is SDPA on views of the fused output, grouped KV heads without copies, the
  causal fast path, and a shared prefix's keys and values through an explicit mask.

Each change keeps every dot product a dot product of the same fp32 numbers, so results
agree with transformers' forward to float32 rounding (tested against it, and against a
float64 reference, in tests/test_scoring_exact.py). It serves only what the scorer needs
(hidden states of right-padded rows, optionally after a shared prefix) and only the
configurations `supports` accepts; anything else runs transformers' own forward.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch
import torch.nn.functional as F

from .gemm import Linear, pick_gemm

FAMILIES = {"llama", "qwen2", "mistral"}
KERNELS = ("auto", "fused", "eager")
# One fused copy of the weights per model and GEMM path, shared by the scorer and the
# generator of that model (both only read it), dropped with the model.
_BODIES: "weakref.WeakKeyDictionary[Any, dict[str, FusedBody]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values of a prefix [1, kv heads, len, d]


def supports(model: Any) -> str | None:
    """None when `FusedBody` computes `model.base_model` exactly, else why not (in words)."""
    cfg = model.config
    if cfg.model_type not in FAMILIES:
        return f"model type {cfg.model_type} (the fused forward knows {', '.join(sorted(FAMILIES))})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act}"
    if getattr(cfg, "mlp_bias", False):
        return "MLP biases"
    if cfg.model_type != "llama" and getattr(cfg, "use_sliding_window", False):
        return "sliding-window attention"
    param = next(model.parameters())
    if param.dtype != torch.float32 or param.device.type != "cpu":
        return "not fp32 on the CPU"
    cos, _ = model.base_model.rotary_emb(torch.zeros(1, 1, dtype=torch.float32), torch.arange(1, 9)[None])
    half = cos.shape[-1] // 2
    if not torch.equal(cos[..., :half], cos[..., half:]):
        return "a rotary embedding other than rotate-half"
    return None


def _pair_rotated(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head reordered (0, d/2, 1, d/2+1, ...): rotary's pairs side by side."""
    d = weight.shape[0] // heads
    order = torch.stack([torch.arange(d // 2), torch.arange(d // 2, d)], dim=1).flatten()
    return weight.view(heads, d, *weight.shape[1:])[:, order].reshape(weight.shape)


class FusedBody:
    """`model.base_model` as fused layers: right-padded ids in, last hidden states out."""

    def __init__(self, model: Any, gemm: str) -> None:
        body, cfg = model.base_model, model.config
        self.embed, self.rotary = body.embed_tokens, body.rotary_emb
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = cfg.rms_norm_eps
        self.final_norm = body.norm.weight
        self.gemm = gemm
        self.layers = []
        with torch.no_grad():
            for layer in body.layers:
                att, mlp = layer.self_attn, layer.mlp
                w_in, w_post = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
                qkv = torch.cat([_pair_rotated(att.q_proj.weight, self.heads),
                                 _pair_rotated(att.k_proj.weight, self.kv_heads), att.v_proj.weight])
                bias = None
                if att.q_proj.bias is not None:
                    bias = torch.cat([_pair_rotated(att.q_proj.bias, self.heads),
                                      _pair_rotated(att.k_proj.bias, self.kv_heads), att.v_proj.bias])
                gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
                self.layers.append((
                    Linear(qkv * w_in, bias, gemm),  # RMSNorm's weight folded into the columns
                    Linear(att.o_proj.weight, att.o_proj.bias, gemm),
                    Linear(gate_up * w_post, None, gemm),
                    Linear(mlp.down_proj.weight, None, gemm),
                    att.scaling,
                ))

    def prefix(self, ids: torch.Tensor) -> KV:
        """Keys and values (after rotary) of a prefix shared by a batch, per layer."""
        kept: KV = []
        self._run(ids, None, kept)
        return kept

    def __call__(self, ids: torch.Tensor, prefix: KV | None = None) -> torch.Tensor:
        return self._run(ids, prefix, None)

    def segments(self, ids: torch.Tensor, positions: torch.Tensor, spans: list[tuple[int, int]],
                 context: list[torch.Tensor | None]) -> torch.Tensor:
        """Last hidden states [T, hidden] of packed tokens `ids` [T] at `positions` [T].

        Tokens form segments: segment s is tokens spans[s] = [a, b), which see the tokens
        `context[s]` (indices of earlier segments' tokens: its shared prefix; None: nothing)
        and then themselves, causally. So a batch of passes that share prefixes runs each
        distinct token once, with no padding: the GEMMs see every token of the batch as
        one [T, hidden] matrix, attention runs per segment."""
        attend = self.segment_attention(spans, context)
        x = self.embed(ids[None])
        turn = self.rotation(x, positions[None])
        for layer in range(len(self.layers)):
            x = self.block(x, layer, turn, attend)
        return self.final(x)[0]

    def segment_attention(self, spans: list[tuple[int, int]], context: list[torch.Tensor | None]) -> Any:
        """`segments`' attention as `block` calls it, `attend(layer, q, k, v, scale)`: each
        segment's queries against its context's keys and then its own, causally (SDPA per
        segment; the masks made once, here, for every layer). A method of its own so that
        `benchmarks/bench_scoring.py` can time the attention of a real plan alone."""
        gqa = self.kv_heads != self.heads
        keys = [None if c is None else torch.cat([c, torch.arange(a, b)]) for (a, b), c in zip(spans, context)]
        masks = [None if c is None else _additive(torch.ones(b - a, len(c) + b - a, dtype=torch.bool).tril_(len(c)))
                 for (a, b), c in zip(spans, context)]

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
            out = q.new_empty(1, q.shape[2], self.heads, self.head_dim)  # [1, T, h, d]: o's input as it wants it
            for (a, b), idx, mask in zip(spans, keys, masks):
                ks, vs = (k[:, :, a:b], v[:, :, a:b]) if idx is None else (k[:, :, idx], v[:, :, idx])
                out[:, a:b] = F.scaled_dot_product_attention(q[:, :, a:b], ks, vs, attn_mask=mask,
                                                             is_causal=mask is None, scale=scale,
                                                             enable_gqa=gqa).transpose(1, 2)
            return out.transpose(1, 2)

        return attend

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """x / rms(x), the weight left to the next GEMM: one reduction, one scaling."""
        scale = torch.linalg.vector_norm(x, dim=-1, keepdim=True).div_(x.shape[-1] ** 0.5)
        return x / scale.square_().add_(self.eps).sqrt_()

    def rotation(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotary's rotation per position as complex numbers, [rows or 1, n, 1, d/2]."""
        cos, sin = self.rotary(x, positions)
        half = self.head_dim // 2
        return torch.complex(cos[..., :half], sin[..., :half])[:, :, None]

    def block(self, x: torch.Tensor, layer: int, turn: torch.Tensor, attend: Any) -> torch.Tensor:
        """One decoder layer on the residual stream `x` [b, n, hidden] (updated in place).

        `attend(layer, q, k, v, scale)` gets q [b, h, n, d] and this call's k, v [b, kvh, n, d]
        (after rotary) and returns the attention output [b, h, n, d]: how keys are kept and
        masked is the caller's (a scoring batch, a decoding cache)."""
        qkv, o, gate_up, down, scale = self.layers[layer]
        b, n = x.shape[:2]
        h, kvh, d = self.heads, self.kv_heads, self.head_dim
        y = qkv(self._norm(x))  # [b, n, (h + 2 kvh) d]
        qk = y[..., : (h + kvh) * d].unflatten(-1, (h + kvh, d // 2, 2))
        torch.view_as_complex(qk).mul_(turn)  # rotary, in place
        q = y[..., : h * d].unflatten(-1, (h, d)).transpose(1, 2)
        k = y[..., h * d : (h + kvh) * d].unflatten(-1, (kvh, d)).transpose(1, 2)
        v = y[..., (h + kvh) * d :].unflatten(-1, (kvh, d)).transpose(1, 2)
        a = attend(layer, q, k, v, scale)
        x = o(a.transpose(1, 2).reshape(b, n, h * d), residual=x)
        g = gate_up(self._norm(x))
        half = g.shape[-1] // 2
        return down(F.silu(g[..., :half]).mul_(g[..., half:]), residual=x)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """The last norm, weight included: what the vocabulary head reads."""
        return self._norm(x).mul_(self.final_norm)

    def _run(self, ids: torch.Tensor, prefix: KV | None, keep: KV | None) -> torch.Tensor:
        b, n = ids.shape
        start = prefix[0][0].shape[2] if prefix else 0
        gqa = self.kv_heads != self.heads
        mask = _additive(torch.ones(n, start + n, dtype=torch.bool).tril_(start)) if prefix else None

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
            if keep is not None:
                keep.append((k, v))
            if prefix:
                pk, pv = prefix[layer]
                k = torch.cat([pk.expand(b, -1, -1, -1), k], dim=2)
                v = torch.cat([pv.expand(b, -1, -1, -1), v], dim=2)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                                  enable_gqa=gqa)

        x = self.embed(ids)
        turn = self.rotation(x, torch.arange(start, start + n)[None])
        for layer in range(len(self.layers)):
            x = self.block(x, layer, turn, attend)
        return self.final(x)


def _additive(allowed: torch.Tensor) -> torch.Tensor:
    """A boolean attention mask as SDPA's additive float mask, made once per forward: SDPA
    converts a boolean mask at every call, i.e. in every layer (1.5x the attention's time
    on short rows)."""
    return torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))


def select_kernels(model: Any, kernels: str, gemm: str, *, decoding: bool = False) -> tuple[FusedBody | None, str]:
    """The fused body where it applies (`auto`), is demanded (`fused`, else an error saying
    why it cannot), or none (`eager`); and what runs, in words, for run.json. `decoding`:
    for a generator, whose products are mostly a few rows (`gemm.pick_gemm`)."""
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels '{kernels}': use {', '.join(KERNELS)}")
    path = pick_gemm(gemm, decoding=decoding)
    if kernels == "eager":
        return None, "eager (transformers)"
    why_not = supports(model)
    if why_not:
        if kernels == "fused":
            raise ValueError(f"kernels fused: not for this model: {why_not} (use kernels auto or eager)")
        return None, f"eager (transformers; fused does not apply: {why_not})"
    with _LOCK:
        per_path = _BODIES.setdefault(model, {})
        if path not in per_path:
            per_path[path] = FusedBody(model, gemm=path)
        return per_path[path], f"fused (gemm {path})"

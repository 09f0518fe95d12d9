"""Constrained decoding for local models: a JSON schema as an llguidance grammar, applied per
row inside transformers' `generate` (`RowControl`), with per-row budgets and seeded sampling.

Why llguidance (measured against xgrammar, outlines and lm-format-enforcer in
`models/hf/generator.py`'s notes): it is the one that forces a valid, finite answer even
from a random model, with one small wheel. JSON Schema leaves objects open to extra keys,
so schemas are closed first (`closed_schema`); the in-process vLLM generator uses that too.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from pydantic import BaseModel
from transformers import LogitsProcessor

log = logging.getLogger(__name__)

GRAMMAR_OPTIONS = {"whitespace_flexible": False, "lenient": True}  # compact JSON; unknown keywords ignored
TEXT_IN_REASON = 120  # characters of a failed answer quoted in its GenError


def quote(text: str) -> str:
    return repr(text if len(text) <= TEXT_IN_REASON else text[:TEXT_IN_REASON] + "...")


class Constraints:
    """llguidance state shared by all calls: the tokenizer's token table and compiled grammars."""

    def __init__(self, tokenizer: Any, vocab: int, stop_ids: tuple[int, ...]) -> None:
        import llguidance
        import llguidance.hf

        self._ll = llguidance
        try:
            self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=list(stop_ids))
        except ValueError as exc:  # slow (Python-only) tokenizers are not supported
            raise ValueError(f"constrained decoding needs a fast tokenizer: {exc}") from None
        self.vocab = vocab
        self._grammars: dict[type[BaseModel], str] = {}

    def grammar(self, model: type[BaseModel]) -> str:
        if model not in self._grammars:
            schema = closed_schema(model.model_json_schema())
            grammar = self._ll.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=GRAMMAR_OPTIONS)
            is_error, messages = self._ll.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
            if is_error:
                raise ValueError(f"cannot constrain decoding to {model.__name__}'s JSON schema: {messages[0]}")
            for message in messages:  # keywords the grammar ignores; parse_structured still checks them
                log.warning("%s: %s", model.__name__, message)
            self._grammars[model] = grammar
        return self._grammars[model]

    def matchers(self, model: type[BaseModel], n: int) -> list[Any]:
        grammar = self.grammar(model)
        return [self._ll.LLMatcher(self.tokenizer, grammar) for _ in range(n)]


class RowControl(LogitsProcessor):
    """Per-row decoding control inside `model.generate` (which runs greedy):

    - constrained rows: logits outside the grammar's next-token set become -inf;
    - rows at their own budget (the context ends before max_tokens): forced to stop;
    - temperature > 0: the row's token is sampled here from the row's own seeded generator
      and every other logit set to -inf, so generate's argmax picks the sample.
    Rows that already stopped are left alone (generate pads them).
    """

    def __init__(
        self,
        *,
        prompt_width: int,
        budgets: list[int],
        temperatures: list[float],
        seeds: list[int],
        matchers: list[Any] | None,
        stop_ids: tuple[int, ...],
    ) -> None:
        self.prompt_width = prompt_width
        self.budgets = budgets
        self.temperatures = temperatures
        self.matchers = matchers
        self.stop_ids = frozenset(stop_ids)
        self.stop_id = stop_ids[0]  # the one forced when a row must stop
        n = len(budgets)
        self.done = [False] * n
        self.forced_stop = [False] * n
        self.errors: list[str] = [""] * n
        self.generators = [
            torch.Generator().manual_seed(int(s)) if t > 0 else None for s, t in zip(seeds, temperatures, strict=True)
        ]
        self._bitmask: Any = None  # numpy int32 [rows, ceil(vocab / 32)], reused every step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        if step > 0:
            self._advance(input_ids[:, -1].tolist())
        if self.matchers is not None:
            scores = self._mask(scores)
        for b in range(len(self.done)):
            if self.done[b]:
                continue
            if step >= self.budgets[b] or self.errors[b]:
                self.forced_stop[b] = True
                scores[b] = _only(scores[b], self.stop_id)
            elif self.generators[b] is not None:
                probs = torch.softmax(scores[b].float() / self.temperatures[b], dim=-1)
                token = int(torch.multinomial(probs.cpu(), 1, generator=self.generators[b]))
                scores[b] = _only(scores[b], token)
        return scores

    def _advance(self, last_tokens: list[int]) -> None:
        """Feed each live row's last token to its matcher; a stop token ends the row."""
        for b, token in enumerate(last_tokens):
            if self.done[b]:
                continue
            if self.forced_stop[b] or token in self.stop_ids:
                self.done[b] = True
                continue
            matcher = self.matchers[b] if self.matchers is not None else None
            if matcher is not None and not self.errors[b] and not matcher.consume_token(token):
                self.errors[b] = matcher.get_error() or f"token {token} rejected by the grammar"

    def _mask(self, scores: torch.FloatTensor) -> torch.FloatTensor:
        # llguidance.numpy, not llguidance.torch: the latter imports torch's compiler stack
        import llguidance.numpy

        assert self.matchers is not None
        if self._bitmask is None:
            self._bitmask = llguidance.numpy.allocate_token_bitmask(scores.shape[0], scores.shape[1])
        for b, matcher in enumerate(self.matchers):
            if not self.done[b] and not self.errors[b]:
                llguidance.numpy.fill_next_token_bitmask(matcher, self._bitmask, b)
            else:
                self._bitmask[b] = -1  # no constraint: the row is finished or being stopped
        allowed = _unpack_bitmask(torch.from_numpy(self._bitmask), scores.shape[1]).to(scores.device)
        return scores.masked_fill(~allowed, float("-inf"))


def closed_schema(schema: Any) -> Any:
    """`additionalProperties: false` on every object schema that does not say otherwise.

    JSON Schema (and so llguidance) allows extra keys by default, and pydantic only says so
    for models with extra="forbid". An open object lets the model append keys with
    unbounded values after the declared ones, so answers need not end: close them.
    """
    if isinstance(schema, dict):
        closed = {k: closed_schema(v) for k, v in schema.items()}
        if schema.get("type") == "object" and isinstance(schema.get("properties"), dict):
            closed.setdefault("additionalProperties", False)
        return closed
    if isinstance(schema, list):
        return [closed_schema(v) for v in schema]
    return schema


def _unpack_bitmask(bitmask: torch.Tensor, width: int) -> torch.Tensor:
    """llguidance's int32 bitmask [rows, ceil(width/32)] -> bool [rows, width] (bit k of word w = token 32w+k)."""
    shifts = torch.arange(32, dtype=torch.int32)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :width].bool()


def _only(row: torch.Tensor, token: int) -> torch.Tensor:
    forced = torch.full_like(row, float("-inf"))
    forced[token] = 0.0
    return forced

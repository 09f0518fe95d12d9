"""Scorers that tokenise passes themselves: the chat-templated prompt, the exact split of
prompt and output tokens, token counts. Shared by the transformers scorer, the in-process
vLLM scorer and the server scorer's token-id mode, so all of them score the same tokens."""

from __future__ import annotations

from typing import Any, Sequence

from ..base import OnResults, PassError, PassOutcome, PassRequest


class TokenizingScorer:
    """`render_prompt`, `count_tokens`, `encode` for a scorer with `tokenizer` (transformers,
    with a chat template) and `max_length`."""

    tokenizer: Any
    max_length: int

    def render_prompt(self, user: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, req: PassRequest) -> tuple[list[int], int] | PassError:
        """Token ids of prompt + output and the index where the output starts."""
        return split_pass(self.tokenizer, self.render_prompt(req.user), req.output, self.max_length)

    def encode_all(self, requests: Sequence[PassRequest], on_results: OnResults | None = None
                   ) -> tuple[list[PassOutcome | None], list[tuple[int, list[int], int]]]:
        """Results with the passes that cannot be encoded already failed (and reported to
        `on_results`), and (index, ids, output start) of the others, to be scored."""
        results: list[PassOutcome | None] = [None] * len(requests)
        encoded: list[tuple[int, list[int], int]] = []
        for i, req in enumerate(requests):
            enc = self.encode(req)
            if isinstance(enc, PassError):
                results[i] = enc
            else:
                encoded.append((i, enc[0], enc[1]))
        failed = [(i, r) for i, r in enumerate(results) if r is not None]
        if on_results and failed:
            on_results(failed)
        return results, encoded


def split_pass(tokenizer: Any, prompt: str, output: str, max_length: int | None) -> tuple[list[int], int] | PassError:
    """Token ids of prompt + output and the index where the output starts, split exactly.

    One function, so that every scorer that tokenises locally (transformers, in-process vLLM,
    a server sent token ids) counts exactly the same output tokens. `max_length` None: no limit.
    """
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + output, add_special_tokens=False)["input_ids"]
    if full[: len(p_ids)] != p_ids:  # boundary merge: split exactly by construction
        full = p_ids + tokenizer(output, add_special_tokens=False)["input_ids"]
    if len(full) == len(p_ids):
        return PassError("output has no tokens")
    if max_length and len(full) > max_length:
        return PassError(f"too long: {len(full)} tokens > model maximum {max_length}")
    return list(full), len(p_ids)

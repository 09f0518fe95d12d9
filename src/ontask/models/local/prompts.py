"""Chat prompts for generators that tokenise locally (transformers, in-process vLLM): the
chat template applied to the messages, tokenised, and a request that cannot be prompted
(a template that refuses the messages, a prompt that fills the context) as a `GenError`."""

from __future__ import annotations

from typing import Any, Sequence

from ..base import GenError, Usage


class ChatTemplatePrompts:
    """`render`, `encode`, `_prompt_ids` for a generator with `tokenizer` and `max_length`."""

    tokenizer: Any
    max_length: int

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The chat template applied to `messages`, ending with the assistant header."""
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int] | GenError:
        try:
            ids = self.encode(self.render(messages))
        except Exception as exc:  # a template that rejects these messages fails this request only
            return GenError(f"the chat template cannot render these messages: {type(exc).__name__}: {exc}")
        if len(ids) >= self.max_length:
            return GenError(
                f"prompt too long: {len(ids)} tokens, the model's context is {self.max_length} tokens",
                usage=Usage(prompt_tokens=len(ids)),
            )
        return ids

"""One row read by ontask -> one row in the layout a fine-tuning tool reads.

Pure functions, no I/O. The user turn is built by `build_user_turn`, the same function the
scorers use, so a model is trained on exactly the prompt its rows were scored with.

- `messages`: TRL's conversational layout (`SFTTrainer` applies the model's chat template).
- `sharegpt`: `conversations` of `from`/`value` turns (axolotl, LLaMA-Factory `sharegpt`).
- `alpaca`: `instruction`, `input`, `output` (+ `system`) (axolotl, LLaMA-Factory `alpaca`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models.base import build_user_turn
from ..records import Example

FORMATS = ("messages", "sharegpt", "alpaca")

# The keys each layout writes; a --keep column may not overwrite them.
LAYOUT_KEYS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "input", "output", "system"),
}

# Which tools read each layout, for messages and the dataset card.
TRAINERS: dict[str, str] = {
    "messages": "TRL SFTTrainer (conversational), axolotl chat_template, LLaMA-Factory (openai-style sharegpt)",
    "sharegpt": "axolotl (chat_template with from/value), LLaMA-Factory sharegpt",
    "alpaca": "LLaMA-Factory alpaca, axolotl alpaca",
}


def check_format(fmt: str) -> str:
    """The format, or a ValueError that names the flag, so a typo never writes a wrong layout."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def check_keep(fmt: str, keep: Sequence[str]) -> list[str]:
    """The --keep columns, refused when one would overwrite a key of the layout itself."""
    clash = [name for name in keep if name in LAYOUT_KEYS[fmt]]
    if clash:
        raise ValueError(f"--keep: column {clash[0]!r} is a key of the {fmt} layout itself; keep other columns")
    return list(dict.fromkeys(keep))


def own_system(example: Example) -> str | None:
    """The row's own system prompt: a chat row's leading system message, or a `system` column.

    The reader leaves it out of the instruction (it is not what TSS measures), but a trainer
    should still see it, so it is carried unless `--system` replaces it."""
    messages = example.fields.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict) \
            and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        return messages[0]["content"]
    value = example.fields.get("system")
    return value if isinstance(value, str) else None


def can_have_system(example: Example) -> bool:
    """Whether rows of this layout may carry their own system prompt (chat rows, a `system`
    column): then every alpaca row gets a `system` key, so all rows have the same columns."""
    return "messages" in example.fields or "system" in example.fields


def messages_row(user: str, output: str, system: str | None = None) -> dict[str, Any]:
    """TRL's conversational row: an optional system message, the user turn, the answer."""
    turns = [{"role": "system", "content": system}] if system else []
    turns += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": turns}


def sharegpt_row(user: str, output: str, system: str | None = None) -> dict[str, Any]:
    """ShareGPT's row: `human` then `gpt`, after a `system` turn when there is one."""
    turns = [{"from": "system", "value": system}] if system else []
    turns += [{"from": "human", "value": user}, {"from": "gpt", "value": output}]
    return {"conversations": turns}


def alpaca_row(instruction: str, input_text: str, output: str, system: str | None = None) -> dict[str, Any]:
    """Alpaca's row; `system` only when given (None), so plain exports keep three columns."""
    row: dict[str, Any] = {"instruction": instruction, "input": input_text, "output": output}
    if system is not None:
        row["system"] = system
    return row


def to_row(example: Example, fmt: str, system: str | None = None, keep: Sequence[str] = ()) -> dict[str, Any]:
    """`example` in layout `fmt`; `system` (from --system) replaces the row's own system prompt.

    Kept columns come last and are None where a row lacks them, so every row has the same
    columns (datasets and Parquet need one schema)."""
    text = system if system is not None else own_system(example)
    if fmt == "messages":
        row = messages_row(build_user_turn(example.instruction, example.input), example.output, text)
    elif fmt == "sharegpt":
        row = sharegpt_row(build_user_turn(example.instruction, example.input), example.output, text)
    elif fmt == "alpaca":
        uniform = text if text is not None else ("" if can_have_system(example) else None)
        row = alpaca_row(example.instruction, example.input, example.output, uniform)
    else:
        raise ValueError(f"--format: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    for name in keep:
        row[name] = example.fields.get(name)
    return row

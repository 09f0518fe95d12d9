"""Map raw records to `Example`s, for the column layouts people actually ship.

Recognised without flags: Alpaca (`instruction`, `input`, `output`), Dolly
(`instruction`, `context`, `response`), chat (`messages` with roles), and Self-Instruct
(`instruction` plus an `instances` list of `{input, output}`). Anything else is read with
explicit names from `--columns instruction=...,input=...,output=...`.

A row that does not fit becomes a `Failure` whose `field` is the column name as it is in
the user's file, so the message points at something they can find. Length is not checked
here: what is too long depends on the scorer's context window, so the scorer decides.
"""

from __future__ import annotations

from typing import Any

from ontask.records import Example, Failure, InputError, Location

ALPACA = "alpaca"
DOLLY = "dolly"
CHAT = "chat"
SELF_INSTRUCT = "self_instruct"
AUGMENTED = "augmented"  # `ontask augment`'s data.jsonl: instruction, input, response
COLUMNS = "columns"  # explicit names from --columns
LAYOUTS = (ALPACA, DOLLY, CHAT, SELF_INSTRUCT, AUGMENTED, COLUMNS)

# Column names (instruction, input, output) of the flat layouts.
_FLAT_COLUMNS: dict[str, dict[str, str]] = {
    ALPACA: {"instruction": "instruction", "input": "input", "output": "output"},
    DOLLY: {"instruction": "instruction", "input": "context", "output": "response"},
    AUGMENTED: {"instruction": "instruction", "input": "input", "output": "response"},
}
_COLUMN_ROLES = ("instruction", "input", "output")
_COLUMNS_HINT = "--columns instruction=...,input=...,output=..."

Row = Example | Failure


def detect_layout(record: dict[str, Any], file: str = "<input>") -> str:
    """Name the layout of `record` from its keys, or raise InputError naming `file`.

    Checked most specific first: a Self-Instruct record also has `instruction`, and a
    record with both `output` and `response` is read as Alpaca.
    """
    keys = set(record)
    if "messages" in keys:
        return CHAT
    if {"instruction", "instances"} <= keys:
        return SELF_INSTRUCT
    if {"instruction", "output"} <= keys:
        return ALPACA
    if {"instruction", "input", "response"} <= keys and "context" not in keys:
        return AUGMENTED
    if {"instruction", "response"} <= keys:
        return DOLLY
    found = ", ".join(sorted(map(str, keys))) or "(none)"
    raise InputError(
        file,
        f"no known column layout; keys found: {found}. Recognised: alpaca (instruction, "
        "input, output), dolly (instruction, context, response), augmented (instruction, input, "
        "response), chat (messages), "
        f"self_instruct (instruction, instances). Name the columns with {_COLUMNS_HINT}",
    )


def parse_columns(spec: str) -> dict[str, str]:
    """Parse "instruction=q,input=ctx,output=a" into {"instruction": "q", ...}.

    `input` is optional (rows then have an empty input); `instruction` and `output` are
    required. Raises ValueError with a message that says what is wrong and what is valid.
    """
    columns: dict[str, str] = {}
    for part in spec.split(","):
        role, sep, name = (text.strip() for text in part.partition("="))
        if not sep or not role or not name:
            raise ValueError(
                f"bad --columns entry {part.strip()!r} in {spec!r}: expected role=column, "
                f"as in {_COLUMNS_HINT}"
            )
        if role not in _COLUMN_ROLES:
            raise ValueError(
                f"unknown role {role!r} in --columns {spec!r}: roles are instruction, "
                "input, output"
            )
        if role in columns:
            raise ValueError(f"role {role!r} given twice in --columns {spec!r}")
        columns[role] = name
    missing = [role for role in ("instruction", "output") if role not in columns]
    if missing:
        raise ValueError(f"--columns {spec!r} must name {' and '.join(missing)}")
    return columns


def check_columns(record: dict[str, Any], columns: dict[str, str], file: str) -> None:
    """Raise InputError if a column named in --columns is not in `record` (the first row).

    Without this, a typo in the input column would silently give every row an empty
    input; a typo in the others would make every row a Failure.
    """
    for role, name in columns.items():
        if name not in record:
            found = ", ".join(sorted(map(str, record))) or "(none)"
            raise InputError(
                file, f"column {name!r} (given as {role}={name} in --columns) not found; "
                f"keys found: {found}"
            )


def to_examples(
    loc: Location,
    record: dict[str, Any],
    layout: str,
    columns: dict[str, str] | None = None,
) -> list[Row]:
    """Turn one record into Examples (several for Self-Instruct) or Failures.

    `columns` is used, and required, when `layout` is "columns". Every Example keeps the
    original record in `fields` so that writers can carry every input column through.
    """
    if layout == CHAT:
        return [_chat_example(loc, record)]
    if layout == SELF_INSTRUCT:
        return _self_instruct_examples(loc, record)
    if layout == COLUMNS:
        if columns is None:
            raise ValueError("layout 'columns' needs a columns mapping")
        return [_flat_example(loc, record, columns)]
    if layout in _FLAT_COLUMNS:
        return [_flat_example(loc, record, _FLAT_COLUMNS[layout])]
    raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


# --- Field checks ----------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _required_text(loc: Location, record: dict[str, Any], name: str, role: str) -> str | Failure:
    """The string in column `name`, or a Failure if it is missing, not a string, or blank."""
    if name not in record:
        return Failure(loc, f"missing required field '{name}'", field=name)
    value = record[name]
    if not isinstance(value, str):
        return Failure(loc, f"expected a string, found {_type_name(value)}", field=name)
    if not value.strip():
        return Failure(loc, f"empty {role}", field=name)
    return value


def _optional_text(loc: Location, record: dict[str, Any], name: str) -> str | Failure:
    """The input text: missing or null is an empty input; any other non-string fails."""
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        return Failure(loc, f"expected a string, found {_type_name(value)}", field=name)
    return value


# --- Layouts ---------------------------------------------------------------------------


def _flat_example(loc: Location, record: dict[str, Any], columns: dict[str, str]) -> Row:
    """Alpaca, Dolly and --columns: three named columns, input optional."""
    instruction = _required_text(loc, record, columns["instruction"], "instruction")
    if isinstance(instruction, Failure):
        return instruction
    text_in = _optional_text(loc, record, columns["input"]) if "input" in columns else ""
    if isinstance(text_in, Failure):
        return text_in
    output = _required_text(loc, record, columns["output"], "output")
    if isinstance(output, Failure):
        return output
    return Example(instruction, text_in, output, loc, fields=record)


def _chat_example(loc: Location, record: dict[str, Any]) -> Row:
    """One user message and one assistant reply, after an optional system message.

    The system message stays in `fields` but is not part of the instruction: the
    scorer asks how much the instruction predicts the answer, not the system prompt.
    """
    if "messages" not in record:
        return Failure(loc, "missing required field 'messages'", field="messages")
    messages = record["messages"]
    if not isinstance(messages, list):
        return Failure(loc, f"expected a list of messages, found {_type_name(messages)}",
                       field="messages")
    for index, message in enumerate(messages):
        problem = _message_problem(message)
        if problem:
            return Failure(loc, f"message {index}: {problem}", field="messages")
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    roles = [message["role"] for message in turns]
    user_turns = roles.count("user")
    if user_turns > 1:
        return Failure(loc, f"multi-turn conversations are not supported ({user_turns} turns)",
                       field="messages")
    if roles != ["user", "assistant"]:
        found = ", ".join(map(str, roles)) or "(none)"
        return Failure(loc, "expected one user message then one assistant message; "
                       f"found roles: {found}", field="messages")
    user, assistant = turns
    if not user["content"].strip():
        return Failure(loc, "empty instruction (user message)", field="messages")
    if not assistant["content"].strip():
        return Failure(loc, "empty output (assistant message)", field="messages")
    return Example(user["content"], "", assistant["content"], loc, fields=record)


def _message_problem(message: Any) -> str | None:
    """What is wrong with one chat message, or None if it has a role and string content."""
    if not isinstance(message, dict):
        return f"expected an object with role and content, found {_type_name(message)}"
    for key in ("role", "content"):
        if key not in message:
            return f"missing '{key}'"
    if not isinstance(message["content"], str):
        return f"content: expected a string, found {_type_name(message['content'])}"
    return None


def _self_instruct_examples(loc: Location, record: dict[str, Any]) -> list[Row]:
    """One Example per instance, located as `instances[i]` within the record's line."""
    instruction = _required_text(loc, record, "instruction", "instruction")
    if isinstance(instruction, Failure):
        return [instruction]
    if "instances" not in record:
        return [Failure(loc, "missing required field 'instances'", field="instances")]
    instances = record["instances"]
    if not isinstance(instances, list):
        return [Failure(loc, f"expected a list of instances, found {_type_name(instances)}",
                        field="instances")]
    if not instances:
        return [Failure(loc, "empty instances list", field="instances")]
    shared = {key: value for key, value in record.items() if key != "instances"}
    return [
        _instance_example(Location(loc.file, loc.line, f"instances[{index}]"),
                          instruction, shared, instance, index)
        for index, instance in enumerate(instances)
    ]


def _instance_example(
    loc: Location, instruction: str, shared: dict[str, Any], instance: Any, index: int
) -> Row:
    if not isinstance(instance, dict):
        return Failure(loc, f"expected an object with input and output, found "
                       f"{_type_name(instance)}", field="instances")
    text_in = _optional_text(loc, instance, "input")
    if isinstance(text_in, Failure):
        return text_in
    output = _required_text(loc, instance, "output", "output")
    if isinstance(output, Failure):
        return output
    fields = {**shared, **instance, "instance_index": index}
    return Example(instruction, text_in, output, loc, fields=fields)

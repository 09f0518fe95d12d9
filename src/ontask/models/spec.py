"""A model as the user names it: one string plus typed options, checked before anything loads.

The string keeps today's form (`embedded`, `hf:PATH`, `openai:MODEL`, `vllm:PATH`, or any
registered provider's `NAME:TARGET`); the options say how to reach and run it. A spec comes
from a flag (`--judge openai:qwen`), from `--model` (every role at once), or from a YAML
mapping per role:

    models:
      judge: {spec: openai:qwen, base_url: http://gpu-a:8000/v1, concurrency: 8}
      scorer: {spec: openai:smol, base_url: http://127.0.0.1:8080/v1, template: hf:/models/smol}

An option the spec does not know is an error naming it (with the closest known name), and
an option the provider does not take is an error too: a setting is never dropped silently.
`api_key_env` holds the *name* of the environment variable with the key, never the key.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEVICES_HELP = "auto | cpu | cuda | cuda:N"


class ModelSpec(BaseModel):
    """One role's model: which (`spec`) and every option that changes how it is reached or run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str = Field(description="embedded | hf:PATH | openai:MODEL | vllm:PATH | NAME:TARGET of a registered provider")
    # remote (openai:)
    base_url: str | None = Field(None, description="server address, e.g. http://localhost:8000/v1")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the key")
    template: str | None = Field(None, description="scoring through a server: server | hf:PATH | gguf:PATH | FILE.jinja | chatml")
    mode: Literal["echo", "prompt_logprobs"] | None = Field(None, description="server scoring: how prompt log-probs are read")
    concurrency: int | None = Field(None, ge=1, description="the most requests in flight")
    timeout: float | None = Field(None, gt=0, description="seconds per HTTP request")
    max_retries: int | None = Field(None, ge=0, description="retries of a failed request")
    structured: Literal["auto", "response_format", "prompt"] | None = Field(None, description="how JSON schemas are sent")
    batch: bool | None = Field(None, description="chat and server scoring: through the provider's batch API (about half the price, "
                                                 "answered within hours; resumable)")
    # local (embedded, hf:, vllm:)
    device: str | None = Field(None, description=DEVICES_HELP)
    dtype: Literal["auto", "fp32", "bf16", "fp16"] | None = None
    batch_tokens: int | None = Field(None, ge=64, description="scoring: tokens per forward batch (padded; on the fused CPU forward: distinct tokens, shared prefixes once)")
    batch_size: int | None = Field(None, ge=1, description="generation: prompts per batch")
    max_length: int | None = Field(None, ge=8, description="context length (default: the model's)")
    kernels: Literal["auto", "fused", "eager"] | None = Field(
        None, description="CPU fp32 scoring: the fused Llama-family forward (auto: where it applies) or transformers' (eager)")
    gemm: Literal["auto", "default", "onednn"] | None = Field(
        None, description="CPU fp32 scoring: the GEMM path of the fused forward (auto: by the CPU's vendor)")
    # accounting (any provider): what the provider charges, for --dry-run's estimate, the
    # spent cost in run.json and --max-cost. None built in: a stale price would mislead silently.
    input_price: float | None = Field(None, ge=0, description="USD per million prompt tokens")
    output_price: float | None = Field(None, ge=0, description="USD per million generated tokens")
    batch_price_factor: float | None = Field(None, gt=0, le=1, description="with batch: the share of the online "
                                                                            "prices paid (default 0.5)")

    def cost(self, prompt_tokens: int, output_tokens: int = 0) -> float | None:
        """USD for that many tokens, or None when the spec gives no price (batch mode: discounted)."""
        if self.input_price is None and self.output_price is None:
            return None
        online = (prompt_tokens * (self.input_price or 0.0) + output_tokens * (self.output_price or 0.0)) / 1e6
        return online * ((self.batch_price_factor or 0.5) if self.batch else 1.0)

    @field_validator("spec")
    @classmethod
    def _named(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("a model spec cannot be empty (e.g. embedded, hf:PATH, openai:MODEL)")
        provider, colon, target = v.partition(":")
        if colon and not target:
            raise ValueError(f"'{v}' names no model after '{provider}:'")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is None:
            return v
        name = v.strip().lower()
        if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
            return name
        raise ValueError(f"unknown device '{v}': use {DEVICES_HELP}")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"spec": data} if isinstance(data, str) else data

    # -- what it names --------------------------------------------------------------------
    @property
    def provider(self) -> str:
        """The registry name: the part before ':' (`embedded` has none)."""
        return self.spec.partition(":")[0] if ":" in self.spec else self.spec

    @property
    def target(self) -> str:
        """What the provider loads: a path, a served model's name ('' for `embedded`)."""
        return self.spec.partition(":")[2]

    def options(self) -> dict[str, Any]:
        """The options that were set (not None), without `spec`."""
        return {k: v for k, v in self.model_dump(exclude={"spec"}).items() if v is not None}

    def with_defaults(self, **defaults: Any) -> "ModelSpec":
        """This spec with the options it leaves unset taken from `defaults` (None values ignored)."""
        mine = self.options()
        filled = {k: v for k, v in defaults.items() if v is not None and k not in mine}
        return self.model_copy(update=filled) if filled else self

    def __str__(self) -> str:
        return self.spec


OPTION_NAMES: tuple[str, ...] = tuple(k for k in ModelSpec.model_fields if k != "spec")


def parse_spec(value: "str | dict[str, Any] | ModelSpec", where: str = "model") -> ModelSpec:
    """A `ModelSpec` from a string or a mapping, or a `ValueError` that names `where` and the option in words."""
    if isinstance(value, ModelSpec):
        return value
    try:
        return ModelSpec.model_validate(value)
    except ValidationError as err:
        raise ValueError(spec_error_text(err, where)) from None


def spec_error_text(err: ValidationError, where: str) -> str:
    """pydantic's errors as sentences: `judge: unknown option 'bse_url' (did you mean base_url?)`."""
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(field, OPTION_NAMES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known options: {', '.join(OPTION_NAMES)})"
            lines.append(f"{where}: unknown option '{field}'{hint}")
        elif e["type"] == "missing" and field == "spec":
            lines.append(f"{where}: say which model with 'spec' (e.g. spec: openai:MODEL)")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: option '{field}': {msg}" if field else f"{where}: {msg}")
    return "; ".join(lines)


def parse_option_assignments(items: list[str] | None) -> dict[str, dict[str, str]]:
    """`--model-option ROLE.KEY=VALUE` (or `KEY=VALUE` for every role) -> {role or '*': {key: value}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        left, eq, value = item.partition("=")
        if not eq or not left.strip():
            raise ValueError(f"--model-option '{item}': write ROLE.OPTION=VALUE (e.g. judge.base_url=http://host:8000/v1) "
                             "or OPTION=VALUE for every role")
        role, dot, key = left.strip().rpartition(".")
        out.setdefault(role if dot else "*", {})[key] = value.strip()
    return out



def take(spec: ModelSpec, settings: dict[str, Any], *keys: str) -> dict[str, Any]:
    """Keyword arguments for a provider's loader: each of `keys` from the spec's options, else
    from the run's `settings`, leaving out what neither sets (the loader's default applies)."""
    mine = spec.options()
    out = {}
    for k in keys:
        value = mine.get(k, settings.get(k))
        if value is not None:
            out[k] = value
    return out

"""`vllm:PATH` generation: vLLM's in-process engine, batched, with JSON-schema-constrained decoding.

Why: every TCIA role (decomposer, composer, verifier, judges, responders) generates far
more tokens than scoring reads; on a GPU vLLM's continuous batching does that many times
faster than transformers' `generate`, with no server to run. Targets the vLLM 0.33 offline
API; the calls used (`LLM.generate` on token-id prompts, `SamplingParams` with `logprobs`,
`seed`, structured outputs) are the same back to 0.6, and both names of the JSON
constraint are supported: `structured_outputs=StructuredOutputsParams(json=...)` (0.11 on)
and `guided_decoding=GuidedDecodingParams(json=...)` (before; removed in 0.12).

Same semantics as `HFGenerator`, so the two are interchangeable:
- prompts are rendered with the model's transformers chat template and tokenised here,
  then sent as token ids, all requests of a call in one `generate` (vLLM schedules them);
- a `response_model` constrains decoding to its closed JSON schema, compact (no free
  whitespace), and every answer is still validated with `parse_structured`; a JSON answer
  cut off at max_tokens is a `GenError`, a free-text one is returned with `truncated`;
- sampling (temperature > 0) uses the request's seed per request, so an answer does not
  depend on its batch;
- `choice_probs` reads the first token's top-20 log-probs (vLLM's default `max_logprobs`)
  and renormalises over the choices exactly as the OpenAI backend does
  (`renormalise_choices`).
vLLM rejects a whole `generate` call when one request is invalid (e.g. a schema its grammar
backend cannot compile), so a failed call is retried request by request and only the bad
ones become `GenError`s. The pure parts (sampling kwargs, output -> outcome) are functions
tested without vLLM.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Mapping, Sequence

from .scorer import DEFAULT_GPU_MEMORY_UTILIZATION, generate_each, load_model, vllm_version
from ..base import (
    ChatOutcome,
    ChatRequest,
    ChatResult,
    ChoiceOutcome,
    ChoiceRequest,
    ChoiceResult,
    GenError,
    OnChat,
    OnChoice,
    Usage,
    generation_fingerprint_of as fingerprint_of,
    renormalise_choices,
)
from ..local.grammar import closed_schema, quote
from ..structured import StructuredError, parse_structured
from ..local.prompts import ChatTemplatePrompts

TOP_LOGPROBS = 20  # vLLM's default max_logprobs, and what the OpenAI backend asks for


# -- pure parts: sampling parameters -------------------------------------------------------
def structured_api(sampling_params_module: Any) -> tuple[str, type] | None:
    """(SamplingParams field, its params class) for a JSON constraint in this vLLM, or None."""
    cls = getattr(sampling_params_module, "StructuredOutputsParams", None)
    if cls is not None:
        return "structured_outputs", cls
    cls = getattr(sampling_params_module, "GuidedDecodingParams", None)
    if cls is not None:
        return "guided_decoding", cls
    return None


def json_constraint_kwargs(schema: dict[str, Any], params_cls: type) -> dict[str, Any]:
    """Arguments of the constraint class: the closed schema, compact JSON where supported.

    Free whitespace lets a small model pad an answer with blanks until max_tokens; closed
    objects stop it appending keys. Options the installed class lacks are left out.
    """
    try:
        accepted = set(inspect.signature(params_cls).parameters)
    except (TypeError, ValueError):
        accepted = set()
    kw: dict[str, Any] = {"json": closed_schema(schema)}
    if "disable_any_whitespace" in accepted:
        kw["disable_any_whitespace"] = True
    return kw


def chat_sampling_kwargs(req: ChatRequest, budget: int, repetition_penalty: float = 1.0) -> dict[str, Any]:
    """SamplingParams arguments (without the JSON constraint) for one chat request."""
    kw: dict[str, Any] = {"max_tokens": int(budget), "temperature": float(req.temperature), "skip_special_tokens": True}
    if req.temperature > 0:
        kw["seed"] = int(req.seed)  # a per-request generator: the answer does not depend on the batch
    if req.response_model is None and repetition_penalty != 1.0:  # a grammar already bounds JSON answers
        kw["repetition_penalty"] = float(repetition_penalty)
    return kw


def choice_sampling_kwargs() -> dict[str, Any]:
    """SamplingParams arguments for `choice_probs`: one greedy token and its top log-probs."""
    return {"max_tokens": 1, "temperature": 0.0, "logprobs": TOP_LOGPROBS}


# -- pure parts: outputs -> outcomes ---------------------------------------------------------
def chat_outcome(req: ChatRequest, text: str, finish_reason: str | None, n_prompt: int, n_completion: int,
                 budget: int, max_length: int) -> ChatOutcome:
    """A vLLM `CompletionOutput` (text, finish_reason, token count) as a ChatResult or GenError."""
    usage = Usage(prompt_tokens=n_prompt, completion_tokens=n_completion)
    if finish_reason not in ("stop", "length"):
        return GenError(f"vLLM ended the answer with finish_reason {finish_reason!r}: {quote(text)}", usage=usage)
    truncated = finish_reason == "length"
    if req.response_model is None:
        if not text.strip():
            return GenError("empty answer", usage=usage)
        return ChatResult(text, usage=usage, truncated=truncated)
    if truncated:
        where = (f"max_tokens={req.max_tokens}" if budget == req.max_tokens
                 else f"the context limit ({max_length} tokens, {budget} left for the answer)")
        return GenError(f"truncated at {where}: {quote(text)}", usage=usage)
    try:
        data, repaired = parse_structured(text, req.response_model)
    except StructuredError as exc:
        return GenError(f"invalid {req.response_model.__name__}: {exc}: {quote(text)}", usage=usage)
    return ChatResult(text, data=data, usage=usage, repaired=repaired)


def top_logprobs(position: Mapping[int, Any] | None, decode: Callable[[int], str]) -> list[tuple[str, float]]:
    """(token text, logprob) pairs from one position of vLLM's logprobs ({token id: Logprob}).

    `decode` supplies the text where vLLM did not (`decoded_token` is None when
    detokenisation is off)."""
    pairs = []
    for token_id, entry in (position or {}).items():
        token = getattr(entry, "decoded_token", None)
        logprob = getattr(entry, "logprob", entry)
        pairs.append((token if token is not None else decode(int(token_id)), logprob))
    return pairs


def choice_outcome(choices: Sequence[str], top: Sequence[tuple[str, float]], n_prompt: int) -> ChoiceOutcome:
    """Renormalised choice probabilities, or a GenError when no choice is among the top tokens."""
    usage = Usage(prompt_tokens=n_prompt, completion_tokens=1)
    if not top:
        return GenError("vLLM returned no logprobs for the first token", usage=usage)
    probs, mass = renormalise_choices(choices, top)
    if mass <= 0.0:
        ranked = sorted(top, key=lambda t: -t[1] if isinstance(t[1], (int, float)) else 0.0)
        seen = ", ".join(repr(t) for t, _ in ranked[:5])
        return GenError(f"none of the choices {', '.join(choices)} is among the top {len(top)} next tokens (top: {seen})",
                        usage=usage)
    return ChoiceResult(probs, mass, usage=usage)


# -- the generator ---------------------------------------------------------------------------
class VLLMGenerator(ChatTemplatePrompts):
    """Implements `Generator` with an in-process `vllm.LLM`."""

    def __init__(self, llm: Any, tokenizer: Any, *, name: str, identity: dict[str, Any], max_length: int,
                 repetition_penalty: float = 1.0) -> None:
        import vllm.sampling_params

        if not tokenizer.chat_template:
            raise ValueError(f"{name}: the tokenizer has no chat_template; chat needs one")
        self.llm = llm
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = int(max_length)
        self.repetition_penalty = float(repetition_penalty)
        self._structured = structured_api(vllm.sampling_params)
        self._identity = {
            **identity,
            **({"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1.0 else {}),
            "decoding": f"vllm {vllm_version()}",
        }
        self._fingerprint = fingerprint_of(self._identity)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def supports_choice_probs(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self._fingerprint, **self._identity}

    # -- chat ----------------------------------------------------------------------------
    def chat(self, requests: Sequence[ChatRequest], on_result: OnChat | None = None) -> list[ChatOutcome]:
        """Answers aligned with `requests`, all generated in one vLLM call."""
        results: list[ChatOutcome | None] = [None] * len(requests)

        def final(i: int, outcome: ChatOutcome) -> None:
            results[i] = outcome
            if on_result is not None:
                on_result(i, outcome)

        todo: list[tuple[int, list[int], int, Any]] = []
        for i, req in enumerate(requests):
            ids = self._prompt_ids(req.messages)
            if isinstance(ids, GenError):
                final(i, ids)
                continue
            budget = min(req.max_tokens, self.max_length - len(ids))
            params = self._chat_params(req, budget)
            if isinstance(params, GenError):
                final(i, GenError(params.reason, usage=Usage(prompt_tokens=len(ids))))
                continue
            todo.append((i, ids, budget, params))
        outputs = generate_each(self.llm, [ids for _, ids, _, _ in todo], [p for _, _, _, p in todo])
        for (i, ids, budget, _), out in zip(todo, outputs, strict=True):
            if isinstance(out, Exception):
                final(i, GenError(f"vLLM rejected this request: {type(out).__name__}: {out}",
                                  usage=Usage(prompt_tokens=len(ids))))
                continue
            completion = out.outputs[0]
            final(i, chat_outcome(requests[i], completion.text or "", completion.finish_reason, len(ids),
                                  len(completion.token_ids or ()), budget, self.max_length))
        return results  # type: ignore[return-value]

    def _chat_params(self, req: ChatRequest, budget: int) -> Any:
        from vllm import SamplingParams

        kw = chat_sampling_kwargs(req, budget, self.repetition_penalty)
        try:
            if req.response_model is not None:
                if self._structured is None:
                    return GenError(f"this vLLM ({vllm_version()}) has no structured outputs; upgrade vLLM")
                field, cls = self._structured
                kw[field] = cls(**json_constraint_kwargs(req.response_model.model_json_schema(), cls))
            return SamplingParams(**kw)
        except Exception as exc:  # an unsupported schema or setting fails this request only
            return GenError(f"vLLM cannot take this request: {type(exc).__name__}: {exc}")

    # -- choice probabilities ------------------------------------------------------------
    def choice_probs(self, requests: Sequence[ChoiceRequest], on_result: OnChoice | None = None) -> list[ChoiceOutcome]:
        """Next-token probabilities of the choices, renormalised, from one vLLM call."""
        from vllm import SamplingParams

        results: list[ChoiceOutcome | None] = [None] * len(requests)

        def final(i: int, outcome: ChoiceOutcome) -> None:
            results[i] = outcome
            if on_result is not None:
                on_result(i, outcome)

        todo: list[tuple[int, list[int]]] = []
        for i, req in enumerate(requests):
            ids = self._prompt_ids(req.messages)
            if isinstance(ids, GenError):
                final(i, ids)
            else:
                todo.append((i, ids))
        params = SamplingParams(**choice_sampling_kwargs())
        outputs = generate_each(self.llm, [ids for _, ids in todo], [params] * len(todo))
        for (i, ids), out in zip(todo, outputs, strict=True):
            if isinstance(out, Exception):
                final(i, GenError(f"vLLM rejected this request: {type(out).__name__}: {out}",
                                  usage=Usage(prompt_tokens=len(ids))))
                continue
            logprobs = out.outputs[0].logprobs
            position = logprobs[0] if logprobs is not None and len(logprobs) > 0 else None
            final(i, choice_outcome(requests[i].choices, top_logprobs(position, self._decode), len(ids)))
        return results  # type: ignore[return-value]

    def _decode(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

def load_vllm_generator(
    path: str | os.PathLike,
    *,
    dtype: str = "auto",
    max_length: int | None = None,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    repetition_penalty: float = 1.0,
    name: str | None = None,
) -> VLLMGenerator:
    """`vllm:PATH` (a local folder; no hub access on purpose) as a generator."""
    llm, tokenizer, identity, length = load_model(path, dtype=dtype, max_length=max_length,
                                                  gpu_memory_utilization=gpu_memory_utilization)
    return VLLMGenerator(llm, tokenizer, name=name or f"vllm:{path}", identity=identity, max_length=length,
                         repetition_penalty=repetition_penalty)

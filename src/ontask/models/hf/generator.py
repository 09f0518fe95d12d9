"""Local generation with transformers: batched chat, JSON-schema-constrained decoding, choice probabilities.

The embedded SmolLM2-135M and any `hf:PATH` model generate here, on the CPU of a laptop,
so every TCIA role can run with nothing but this package installed.

Why constrained decoding, and why llguidance
--------------------------------------------
A 135M model rarely writes valid JSON for a nested schema on its own, and re-asking costs
more than answering. So when a request names a `response_model`, every decoding step masks
the logits to the tokens that keep the output a prefix of a document valid against the
model's JSON schema (compact JSON, no free whitespace; `maxLength`/`maxItems` make the
grammar finite, so the answer always ends). Candidates compared on 2 CPU cores (torch
2.13 CPU, transformers 5.23) with a pydantic schema using $defs/$ref, an enum, an int range
(1..5), strings with maxLength and lists with maxItems. "tiny": the random test model, 8
prompts, up to 400 new tokens; "SmolLM2": greedy, 8 prompts, up to 128 new tokens,
completion tokens / wall time:

| library                   | extra installs                  | transformers 5.23 | int range | tiny    | SmolLM2 tok/s b=1 / b=8 (valid) |
|---------------------------|---------------------------------|-------------------|-----------|---------|---------------------------------|
| llguidance 1.9.1          | none (one 3 MB abi3 wheel)      | own processor     | yes       | 8/8     | 14.1 / 65.9 (8/8)               |
| xgrammar 0.2.8            | apache-tvm-ffi, triton          | contrib.hf        | yes       | 2/8 (a) | 14.6 / 54.1 (7/8)               |
| outlines 1.3.3            | outlines_core + 8 (pillow, ...) | from_transformers | no (b)    | 1/8     | 14.1 / 66.2 (7/8)               |
| lm-format-enforcer 0.11.3 | interegular                     | import fails (c)  | yes       | 0/8 (d) | 13.9 / 53.3 (3/8)               |
| unconstrained             |                                 |                   |           | 0/8     | 14.1 / 61.5 (0/8, fenced JSON)  |

(a) raw control characters inside strings; (b) "priority":656656...; (c) imports
PreTrainedTokenizerBase from its transformers 4 location, measured with a shim;
(d) runs of whitespace until max_tokens.

None pulls another torch build. On a model this small the per-token cost of the mask is
lost in the forward pass; what separates them is validity on the random model (which
checks that the grammar alone forces a valid, finite answer) and the install footprint.
llguidance wins both. It has no transformers integration of its own, so `RowControl`
below is the logits processor. JSON Schema leaves objects open to extra keys, so schemas
are closed first (`closed_schema`, in `models/local/grammar.py` with the rest of it). Every constrained answer is still validated with
`parse_structured`, since a grammar does not check everything pydantic does, and an
answer cut off at `max_tokens` is a `GenError`, never a partial object.

How it is fast: prompts are rendered with the tokenizer's chat template, grouped by
(response model, max_tokens, temperature), sorted by length and generated in left-padded
batches with a KV cache. On the CPU in fp32, Llama-family models decode with the fused
forward and a cache allocated once (`decode.py`: transformers' greedy loop, step for step,
on oneDNN's prepacked weights); elsewhere `model.generate` runs. `choice_probs` runs one
right-padded forward pass per batch and projects only each prompt's last position onto
the vocabulary.
Sampling (temperature > 0) draws each row from its own generator seeded by the request's
seed, so an answer does not depend on which other requests share its batch. Measured with
SmolLM2-135M on 2 cores (the prompts above, up to 128 new tokens): 14.6 tok/s at batch 1
and 79.8 at batch 8 unconstrained; 15.2 and 72.6 constrained (8/8 valid objects).
Batches hold up to 16 prompts: decoding a small model on a CPU is bound by reading the
weights once per step, so a step of 16 rows costs little more than one of 8, and a batch
runs as many steps as its longest answer. Ten support replies of up to 256 tokens (the
demo's respond step): 14.5 s as batches of 8 and 2, 10.6 s as one batch, the same text.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessorList, RepetitionPenaltyLogitsProcessor

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
)
from ..structured import StructuredError, parse_structured
from ..local.grammar import Constraints, RowControl, quote
from ..local.prompts import ChatTemplatePrompts
from ..local.weights import load_causal_lm, model_device
from .decode import FusedDecoder
from .fused import select_kernels
from .gemm import pick_gemm
from .scorer import MIN_SHARED_PREFIX, common_prefix, right_padded, shared_prefix

log = logging.getLogger(__name__)

MAX_THREADS = 8  # a 135M-1B model stops scaling well before this on CPU


# -- set-up ------------------------------------------------------------------------------
def configure_threads() -> int:
    """Use at most the CPUs this process may run on (and MAX_THREADS), unless the user chose.

    torch defaults to the machine's physical cores, which in a container can exceed the
    CPUs it is allowed; oversubscription makes small-matrix decoding several times slower.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, min(torch.get_num_threads(), allowed, MAX_THREADS))
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@dataclass(slots=True)
class _Prompt:
    """A request ready to run: its position in the call, token ids and generation budget."""

    index: int
    ids: list[int]
    budget: int  # new tokens allowed: max_tokens, or less where the context ends first


class HFGenerator(ChatTemplatePrompts):
    """Implements `Generator` with a local transformers causal LM."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        identity: dict[str, Any],
        batch_size: int = 16,
        max_length: int | None = None,
        repetition_penalty: float = 1.0,
        kernels: str = "auto",
        gemm: str = "auto",
    ) -> None:
        if not tokenizer.chat_template:
            raise ValueError(f"{name}: the tokenizer has no chat_template; chat needs one")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = max(1, int(batch_size))
        self.max_length = int(max_length or getattr(model.config, "max_position_embeddings", 2048))
        self.threads = configure_threads()
        self.device = model_device(model)  # inputs go where the weights are
        self._stop_ids = _stop_ids(model, tokenizer)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._stop_ids[0]
        self._vocab = int(model.get_output_embeddings().weight.shape[0])
        # On the CPU in fp32, Llama-family models decode with the fused forward and a cache
        # allocated once (`decode.py`), and choice_probs runs it as the scorer does.
        self._fused, self.kernels = select_kernels(model, kernels, gemm, decoding=True)
        self._decoder = None
        if self._fused is not None:
            # one to three rows: MKL's matrix-vector kernels where `gemm auto` keeps MKL for scoring (Intel)
            few = select_kernels(model, kernels, "default")[0] if gemm == "auto" and pick_gemm() == "default" else None
            self._decoder = FusedDecoder(self._fused, model.get_output_embeddings(),
                                         getattr(model.config, "final_logit_softcapping", None), few_rows=few)
        self._constraints: Constraints | None = None
        self._choice_cache: dict[tuple[str, ...], tuple[int, ...]] = {}
        # Applied to free-text answers only (a JSON answer's grammar already bounds it):
        # small models loop on greedy decoding, and a mild penalty (1.1-1.3) stops that.
        self.repetition_penalty = float(repetition_penalty)
        self._identity = {
            **identity,
            **({"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1.0 else {}),
            "template": hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()[:16],
            "dtype": str(next(model.parameters()).dtype),
            **({"device": self.device.type} if self.device.type != "cpu" else {}),
            "decoding": f"transformers {_version('transformers')}; llguidance {_version('llguidance')}",
        }
        self._fingerprint = fingerprint_of(self._identity)

    # -- identity ------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def supports_choice_probs(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self._fingerprint, "backend": "transformers", **self._identity,
                "kernels": self.kernels}

    # -- batch plan ----------------------------------------------------------------------
    def plan(self, requests: Sequence[ChatRequest] | Sequence[ChoiceRequest]) -> list[list[int]]:
        """The forward batches `chat`/`choice_probs` would run, as lists of request indices
        in batch order (requests that cannot even be prompted come last, as one list).

        A caller that splits its work along this plan and sends each batch, in this order, to
        another copy of this model gets the very batches, hence the very answers, of one
        local call: how the Ray engine spreads a step over actors without changing it.
        """
        batches, failed = self._batches(requests)
        plan = [[p.index for p in batch] for batch in batches]
        return plan + ([[i for i, _ in failed]] if failed else [])

    def _batches(self, requests: Sequence[ChatRequest] | Sequence[ChoiceRequest]
                 ) -> tuple[list[list[_Prompt]], list[tuple[int, GenError]]]:
        """The one batching rule of this generator (used by `chat`, `choice_probs` and `plan`):
        chat requests grouped by (response model, max_tokens, temperature), each group length-
        sorted into batches; plus the requests that cannot be prompted, with why."""
        groups: dict[tuple[Any, ...], list[_Prompt]] = {}
        failed: list[tuple[int, GenError]] = []
        for i, req in enumerate(requests):
            ids = self._prompt_ids(req.messages)
            if isinstance(ids, GenError):
                failed.append((i, ids))
            elif isinstance(req, ChatRequest):
                budget = min(req.max_tokens, self.max_length - len(ids))
                groups.setdefault((req.response_model, req.max_tokens, req.temperature), []).append(_Prompt(i, ids, budget))
            else:
                groups.setdefault((), []).append(_Prompt(i, ids, 0))
        batches = []
        for key, members in groups.items():
            if key == () and self._fused is not None:  # one forward pass each: a shared prefix runs once
                batches += _prefix_grouped_batches(members, self.batch_size)
            else:
                batches += _length_sorted_batches(members, self.batch_size)
        return batches, failed

    # -- chat ----------------------------------------------------------------------------
    def chat(self, requests: Sequence[ChatRequest], on_result: OnChat | None = None) -> list[ChatOutcome]:
        """Answers aligned with `requests`; `on_result` fires as each batch finishes.

        A structured answer cut off at max_tokens is a GenError; a plain-text one is returned
        as far as it got (as an OpenAI server does with finish_reason "length").
        """
        results: list[ChatOutcome | None] = [None] * len(requests)

        def final(i: int, outcome: ChatOutcome) -> None:
            results[i] = outcome
            if on_result is not None:
                on_result(i, outcome)

        batches, failed = self._batches(requests)
        for i, error in failed:
            final(i, error)
        for batch in batches:
            for prompt, outcome in zip(batch, self._chat_batch([requests[p.index] for p in batch], batch), strict=True):
                final(prompt.index, outcome)
        return results  # type: ignore[return-value]

    def _chat_batch(self, reqs: list[ChatRequest], batch: list[_Prompt]) -> list[ChatOutcome]:
        """Generate one batch (same response model, max_tokens and temperature)."""
        model_cls = reqs[0].response_model
        matchers: list[Any] | None = None
        if model_cls is not None:
            try:
                matchers = self._get_constraints().matchers(model_cls, len(batch))
            except ValueError as exc:
                return [GenError(str(exc), usage=Usage(prompt_tokens=len(p.ids))) for p in batch]
        width = max(len(p.ids) for p in batch)
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, p in enumerate(batch):  # left padding: every prompt ends at the last column
            ids[b, width - len(p.ids):] = torch.tensor(p.ids)
            mask[b, width - len(p.ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        control = RowControl(
            prompt_width=width,
            budgets=[p.budget for p in batch],
            temperatures=[r.temperature for r in reqs],
            seeds=[r.seed for r in reqs],
            matchers=matchers,
            stop_ids=self._stop_ids,
        )
        penalty = self.repetition_penalty if reqs[0].response_model is None else 1.0
        if self._decoder is not None:  # the fused loop: transformers' greedy loop, step for step
            processors = [RepetitionPenaltyLogitsProcessor(penalty)] if penalty != 1.0 else []
            out = self._decoder.generate(ids, mask, max_new_tokens=max(p.budget for p in batch),
                                         processors=LogitsProcessorList([*processors, control]),
                                         stop_ids=self._stop_ids, pad_id=self._pad_id)
        else:
            out = self._generate(ids, mask, max(p.budget for p in batch), penalty, control)
        new = out[:, width:].tolist()
        return [self._chat_outcome(r, p, row, control, b) for b, (r, p, row) in enumerate(zip(reqs, batch, new, strict=True))]

    def _generate(self, ids: torch.Tensor, mask: torch.Tensor, max_new: int, penalty: float,
                  control: RowControl) -> torch.Tensor:
        """transformers' `generate`, greedy (RowControl samples where asked): GPUs, other dtypes
        and the families the fused forward does not cover."""
        config = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=False,  # RowControl samples itself where temperature > 0
            num_beams=1,
            eos_token_id=list(self._stop_ids),
            pad_token_id=self._pad_id,
            use_cache=True,
            # Neutral values, so a checkpoint's generation_config.json (sampling settings, a
            # repetition penalty) neither changes the answers nor warns: filled in only where None.
            min_length=0, no_repeat_ngram_size=0, repetition_penalty=penalty,
            temperature=1.0, top_k=50, top_p=1.0, typical_p=1.0,
        )
        with torch.inference_mode():
            return self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                       logits_processor=LogitsProcessorList([control]))

    def _chat_outcome(self, req: ChatRequest, prompt: _Prompt, row: list[int], control: RowControl, b: int) -> ChatOutcome:
        stop_at = next((k for k, t in enumerate(row) if t in self._stop_ids), None)
        forced = control.forced_stop[b]
        content = row[: stop_at if stop_at is not None else prompt.budget]
        text = self.tokenizer.decode(content, skip_special_tokens=True)
        natural_stop = stop_at is not None and not forced
        usage = Usage(prompt_tokens=len(prompt.ids), completion_tokens=len(content) + (1 if natural_stop else 0))
        if control.errors[b]:
            return GenError(f"constrained decoding failed: {control.errors[b]}", usage=usage)
        if not natural_stop and req.response_model is not None:
            where = (f"max_tokens={req.max_tokens}" if prompt.budget == req.max_tokens
                     else f"the context limit ({self.max_length} tokens, {prompt.budget} left for the answer)")
            return GenError(f"truncated at {where}: {quote(text)}", usage=usage)
        if req.response_model is None:
            if not text.strip():
                return GenError("empty answer", usage=usage)
            return ChatResult(text, usage=usage, truncated=not natural_stop)
        try:
            data, repaired = parse_structured(text, req.response_model)
        except StructuredError as exc:
            return GenError(f"invalid {req.response_model.__name__}: {exc}: {quote(text)}", usage=usage)
        return ChatResult(text, data=data, usage=usage, repaired=repaired)

    def _get_constraints(self) -> Constraints:
        if self._constraints is None:
            self._constraints = Constraints(self.tokenizer, self._vocab, self._stop_ids)
        return self._constraints

    # -- choice probabilities ------------------------------------------------------------
    def choice_probs(self, requests: Sequence[ChoiceRequest], on_result: OnChoice | None = None) -> list[ChoiceOutcome]:
        """Next-token probabilities of single-token choices; ValueError if a choice is not one token."""
        token_ids = {req.choices: self.choice_token_ids(req.choices) for req in requests}  # fail before any work
        results: list[ChoiceOutcome | None] = [None] * len(requests)

        def final(i: int, outcome: ChoiceOutcome) -> None:
            results[i] = outcome
            if on_result is not None:
                on_result(i, outcome)

        batches, failed = self._batches(requests)
        for i, error in failed:
            final(i, error)
        for batch in batches:
            probs = self._next_token_probs([p.ids for p in batch])
            for b, p in enumerate(batch):
                req = requests[p.index]
                final(p.index, _choice_outcome(req.choices, token_ids[req.choices], probs[b], len(p.ids)))
        return results  # type: ignore[return-value]

    def choice_token_ids(self, choices: Sequence[str]) -> tuple[int, ...]:
        """The token of each choice as the model would write it right after the assistant header."""
        key = tuple(choices)
        if key not in self._choice_cache:
            probe = self.render([{"role": "user", "content": "?"}])
            ids = tuple(self._choice_token(probe, c) for c in key)
            if len(set(ids)) != len(ids):
                raise ValueError(f"choices {list(key)} do not map to distinct tokens ({list(ids)})")
            self._choice_cache[key] = ids
        return self._choice_cache[key]

    def _choice_token(self, probe: str, choice: str) -> int:
        if not choice:
            raise ValueError("a choice must be a non-empty string")
        base = self.encode(probe)
        in_context = self.encode(probe + choice)
        if in_context[: len(base)] == base and len(in_context) == len(base) + 1:
            return in_context[-1]
        tried = {}
        for variant in (choice, " " + choice):
            tried[variant] = self.encode(variant)
            if len(tried[variant]) == 1:
                return tried[variant][0]
        raise ValueError(
            f"choice {choice!r} is not a single token for {self.name}: "
            + ", ".join(f"{v!r} -> {t}" for v, t in tried.items())
            + "; use choices that the tokenizer keeps whole (e.g. single digits)"
        )

    @torch.inference_mode()
    def _next_token_probs(self, seqs: list[list[int]]) -> torch.Tensor:
        """float32 softmax of the logits after each sequence's last token, [batch, vocab].

        Right padding and no attention mask: under the causal mask a real token never sees the
        pads after it, so its logits are exact, and attention keeps the fast causal path. Only
        the rows' last positions are projected onto the vocabulary (`logits_to_keep`). On the
        fused path a prefix common to the batch (`_prefix_grouped_batches` makes them) runs
        once, as in scoring.
        """
        if self._fused is not None:
            # the prompts of one judged item share all but their last lines: that part runs once
            prefix = shared_prefix(seqs, min(len(s) for s in seqs), MIN_SHARED_PREFIX)
            shared = self._fused.prefix(torch.tensor([seqs[0][:prefix]])) if prefix else None
            hidden = self._fused(right_padded(seqs, prefix, self._pad_id), shared)
            last = hidden[torch.arange(len(seqs)), torch.tensor([len(s) - 1 - prefix for s in seqs])]
            return torch.softmax(self._decoder.logits(last), dim=-1)
        ids = right_padded(seqs, 0, self._pad_id)
        last = sorted({len(s) - 1 for s in seqs})
        column = {pos: k for k, pos in enumerate(last)}
        logits = self.model(input_ids=ids.to(self.device), use_cache=False,
                            logits_to_keep=torch.tensor(last, device=self.device)).logits
        picked = logits[torch.arange(len(seqs), device=self.device),
                        torch.tensor([column[len(s) - 1] for s in seqs], device=self.device)]
        return torch.softmax(picked.float(), dim=-1).cpu()


def _choice_outcome(choices: tuple[str, ...], token_ids: tuple[int, ...], probs: torch.Tensor, n_prompt: int) -> ChoiceOutcome:
    raw = [float(probs[t]) for t in token_ids]
    mass = sum(raw)
    usage = Usage(prompt_tokens=n_prompt)
    if not mass > 0.0:
        return GenError(f"the choices {', '.join(choices)} have zero probability after this prompt", usage=usage)
    return ChoiceResult({c: p / mass for c, p in zip(choices, raw, strict=True)}, mass, usage=usage)


def _length_sorted_batches(prompts: list[_Prompt], size: int) -> Iterator[list[_Prompt]]:
    """Longest first (memory trouble shows at once), ties by position: little padding, a stable plan."""
    order = sorted(prompts, key=lambda p: (-len(p.ids), p.index))
    for start in range(0, len(order), size):
        yield order[start : start + size]


def _prefix_grouped_batches(prompts: list[_Prompt], size: int) -> list[list[_Prompt]]:
    """Prompts that share at least half their tokens (a judge asks one item several
    questions, the item first) batched together, so that their common prefix runs once;
    the others length-sorted as usual. In token order, a group's common prefix is that of
    its first and last prompt, so one pass finds the groups."""
    order = sorted(prompts, key=lambda p: (p.ids, p.index))
    groups: list[list[_Prompt]] = []
    for p in order:
        head = groups[-1][0].ids if groups else None
        if head is not None and common_prefix([head, p.ids], len(p.ids)) >= max(MIN_SHARED_PREFIX,
                                                                                 min(len(head), len(p.ids)) // 2):
            groups[-1].append(p)
        else:
            groups.append([p])
    batches = [g[i : i + size] for g in groups if len(g) > 1 for i in range(0, len(g), size)]
    return batches + list(_length_sorted_batches([g[0] for g in groups if len(g) == 1], size))


def _stop_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """End-of-turn tokens: the tokenizer's EOS first, then any others the model's generation config names."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for t in configured if isinstance(configured, (list, tuple)) else [configured]:
        if t is not None and int(t) not in ids:
            ids.append(int(t))
    if not ids:
        raise ValueError("the tokenizer and the model name no end-of-sequence token")
    return tuple(ids)


# -- loading -----------------------------------------------------------------------------
def load_hf_generator(
    path: str | os.PathLike, *, name: str | None = None, identity: dict[str, Any] | None = None,
    device: str | None = None, dtype: str | None = None, **kw: Any
) -> HFGenerator:
    """Load `hf:PATH` (a local folder; no hub access on purpose) as a generator on `device` in
    `dtype` (auto: the GPU in bf16 when there is one, else the CPU in fp32)."""
    from .scorer import weights_identity

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"hf model folder not found: {folder} (ontask never downloads models)")
    model, tokenizer = load_causal_lm(folder, device=device, dtype=dtype)
    ident = identity or {"model": str(folder.resolve()), **weights_identity(folder)}
    return HFGenerator(model, tokenizer, name=name or f"hf:{folder}", identity=ident, **kw)

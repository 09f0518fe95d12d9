"""Which forward passes a row needs, and the row's scores once they are known (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..models.base import PassError, PassOutcome, PassRequest, PassResult, build_user_turn
from ..cache import cache_key
from ..records import Example
from . import scores as S
from .config import ScoreConfig

if TYPE_CHECKING:
    from ..tcia.variants import VariantSet


@dataclass(slots=True)
class RowPlan:
    """The passes of one row: the true instruction, the empty prompt, the alternatives."""

    seq: int
    example: Example
    true: PassRequest
    empty: PassRequest | None
    alternatives: dict[str, list[tuple[str, PassRequest]]] = field(default_factory=dict)
    variants: "VariantSet | None" = None  # the instruction's constraints and their variants

    def requests(self) -> list[PassRequest]:
        reqs = [self.true]
        if self.empty is not None:
            reqs.append(self.empty)
        for alts in self.alternatives.values():
            reqs.extend(r for _, r in alts)
        return reqs


def plan_row(seq: int, ex: Example, cfg: ScoreConfig, alternatives: dict[str, list[str]],
             variants: "VariantSet | None" = None) -> RowPlan:
    """Build the row's pass requests; `alternatives` maps kind -> alternative instructions."""
    true = PassRequest(build_user_turn(ex.instruction, ex.input), ex.output)
    empty = PassRequest("", ex.output) if cfg.needs_empty else None
    alts = {
        kind: [(text, PassRequest(build_user_turn(text, ex.input), ex.output)) for text in texts]
        for kind, texts in alternatives.items()
    }
    return RowPlan(seq, ex, true, empty, alts, variants)


def pass_key(fingerprint: str, req: PassRequest) -> str:
    """Cache key of a pass. The fingerprint covers weights, chat template and settings."""
    return cache_key("pass", fingerprint, req.user, req.output)


class RowFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _lp(outcome: PassOutcome | None, what: str) -> PassResult:
    if outcome is None:
        raise RowFailed(f"{what} pass: no result")
    if isinstance(outcome, PassError):
        raise RowFailed(f"{what} pass: {outcome.reason}")
    return outcome


def row_scores(plan: RowPlan, results: dict[PassRequest, PassOutcome], cfg: ScoreConfig) -> dict[str, Any]:
    """Per-row raw scores. Dataset-level parts (TSS++ z-scores) are finished later.

    Raises RowFailed with the reason if a needed pass failed; no score is ever invented.
    """
    true = _lp(results.get(plan.true), "true instruction")
    lp_true = true.mean_logprob
    out: dict[str, Any] = {
        "lp": lp_true,
        "tokens": true.n_prompt + true.n_output,
        "output_tokens": true.n_output,
    }
    if "ppl" in cfg.metrics:
        out["ppl"] = S.perplexity(lp_true)
    if plan.empty is not None:
        lp_empty = _lp(results.get(plan.empty), "empty prompt").mean_logprob
        out["lp_empty"] = lp_empty
        if "ifd" in cfg.metrics or cfg.quality == "1-ifd":
            out["ifd"] = S.ifd(lp_true, lp_empty)
        if "ifd_ppl" in cfg.metrics:
            out["ifd_ppl"] = S.ifd_ppl(lp_true, lp_empty)
    for kind, alts in plan.alternatives.items():
        if not alts:
            why = (plan.variants.failure if kind == "variants" and plan.variants is not None and plan.variants.failure
                   else "all are near duplicates" if kind == "hard" else "none could be written")
            raise RowFailed(f"no {kind} alternative instruction ({why})")
        lps = [_lp(results.get(req), f"{kind} alternative").mean_logprob for _, req in alts]
        if "tss" in cfg.metrics and kind == cfg.alternatives:
            nearest = lps[: cfg.k]  # hard: the k nearest (the list may hold TSS++'s larger pool)
            out["tss"] = S.tss(lp_true, nearest, cfg.aggregator)
            out["tss_top_alt"] = alts[max(range(len(nearest)), key=lambda i: nearest[i])][0]
        if "tss++" in cfg.metrics and kind == "hard":
            picked = S.most_likely(lps, cfg.k) if cfg.hard_pick == "likelihood" else lps[: cfg.k]
            out["tss_hard"] = S.tss(lp_true, picked, cfg.aggregator)
    if plan.variants is not None and plan.variants.constraints:
        out.update(constraint_scores(plan, lp_true, results, cfg))
    if "tss++" in cfg.metrics:
        q = 0.0 if cfg.quality == "none" else lp_true if cfg.quality == "lp" else 1.0 - out["ifd"]
        if not math.isfinite(q):
            raise RowFailed(f"quality term is not finite ({q})")
        out["_q"] = q
    return out


def constraint_scores(plan: RowPlan, lp_true: float, results: dict[PassRequest, PassOutcome],
                      cfg: ScoreConfig) -> dict[str, Any]:
    """Per-constraint specificity, lp(output | full) - lp(output | without C_i), and code checks.

    Aligned with the row's constraints; None where the Remove variant could not be written
    (or its pass failed). A constraint is `ignored` when the output does not depend on it
    (specificity <= 0) and a checker says the output violates it.
    """
    vs = plan.variants
    assert vs is not None
    by_text = {text: req for alts in plan.alternatives.values() for text, req in alts}
    spec: list[float | None] = []
    for i in range(len(vs.constraints)):
        text = vs.remove_text(i)
        req = by_text.get(text) if text else None
        res = results.get(req) if req is not None else None
        spec.append(lp_true - res.mean_logprob if isinstance(res, PassResult) else None)
    out: dict[str, Any] = {"constraint_specificity": spec}
    if not isinstance(plan.example.fields.get("constraints"), list):  # a row's own list is aligned already: keep it
        out["constraints"] = [c.to_json() for c in vs.constraints]
    if cfg.check:
        from ..checks.verify import check_constraints

        checks = check_constraints([c.text for c in vs.constraints], plan.example.output, plan.example.instruction)
        out["constraint_checks"] = [c.passed for c in checks]
        out["ignored_constraints"] = [c.constraint for c, s in zip(checks, spec)
                                      if c.passed is False and s is not None and s <= 0]
        out["violated_constraints"] = [c.constraint for c in checks if c.passed is False]
    return out

"""Counterfactual variants of an instruction: one constraint removed, or replaced.

TSS asks how much an instruction determines its output by comparing it with alternative
instructions. `variants` are the hardest honest competitors: the same instruction with
one constraint taken out (TCIA's Remove) or swapped for the most similar other
constraint of its task in the constraint database (TCIA's Replace). The Remove variants
also give per-constraint specificity: lp(output | full) - lp(output | without C_i).

How a variant is written, cheapest first:
- the instruction's decomposition comes with the row (augmented rows carry `base_query`
  and `constraints`) or from the decomposer;
- when the constraint's text occurs verbatim in the instruction, the variant is the
  instruction with that span cut out (or replaced by the new constraint's text): exact
  and free;
- otherwise the composer writes the edited state back as an instruction, and the
  verifier checks it states every remaining constraint (TCIA's step 4). An unverified
  variant is not used; its reason is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..models import GenError, Generator
from .compose import compose_and_verify
from .decompose import decompose, states_of
from .search import SearchDB, best_replacements
from .state import Constraint, InstructionState


@dataclass
class Variant:
    op: str  # "remove" | "replace"
    constraint: int  # index into VariantSet.constraints
    text: str | None = None
    added: str | None = None
    method: str = ""  # "cut" (text edit of a verbatim span) | "composed"
    failure: str | None = None


@dataclass
class VariantSet:
    """The variants of one instruction, aligned with its constraints."""

    constraints: list[Constraint]
    variants: list[Variant] = field(default_factory=list)
    failure: str | None = None  # why there are none (decomposition failed, no constraints)

    def texts(self, k: int) -> list[str]:
        """Alternative instructions for TSS: every Remove first, then Replaces, at least k if there are.

        All Removes are always included (per-constraint specificity needs each one); Replaces
        fill up to k. Duplicate texts and texts equal to nothing are dropped.
        """
        removes = [v.text for v in self.variants if v.op == "remove" and v.text]
        replaces = [v.text for v in self.variants if v.op == "replace" and v.text]
        out: list[str] = []
        for t in removes + replaces[: max(0, k - len(removes))]:
            if t not in out:
                out.append(t)
        return out

    def remove_text(self, i: int) -> str | None:
        return next((v.text for v in self.variants if v.op == "remove" and v.constraint == i), None)

    def to_json(self) -> dict[str, Any]:
        return {"constraints": [c.to_json() for c in self.constraints], "failure": self.failure,
                "variants": [v.__dict__ for v in self.variants]}


def state_from_row(record: dict[str, Any]) -> InstructionState | None:
    """The decomposition a row carries (augmented rows, or data prepared by hand), if any."""
    cons = record.get("constraints")
    if not isinstance(cons, list) or not isinstance(record.get("base_query"), str):
        return None
    parsed = []
    for c in cons:
        if isinstance(c, dict) and isinstance(c.get("text"), str):
            parsed.append(Constraint(c["text"], c.get("category") or "Content"))
        elif isinstance(c, str):
            parsed.append(Constraint(c))
    return InstructionState(str(record.get("task_type") or ""), record["base_query"], tuple(parsed))


def cut(instruction: str, span: str, replacement: str | None = None) -> str | None:
    """The instruction with `span` (found case-insensitively, ignoring a trailing period) cut out
    or replaced; None when the span is not in the instruction verbatim."""
    core = span.strip().rstrip(".;!")
    if not core:
        return None
    m = re.search(re.escape(core) + r"[.;!]?", instruction, re.I)
    if not m:
        return None
    if replacement is None:
        left, right = instruction[: m.start()].rstrip(), instruction[m.end():]
        joint = re.search(r"(?:[,;]\s*|\s+)(?:and|or|but|also|then)$|[,;]$", left)
        if joint:  # "..., and <span>." -> "...."
            left = left[: joint.start()]
        end = m.group(0)[-1] if m.group(0)[-1:] in ".;!" else ""
        if end and left and left[-1] not in ".!?;:":  # the span ended the sentence: keep its full stop
            left += end
        out = left + (" " if left and right and not right[:1].isspace() else "") + right
    else:
        new = replacement.strip()
        if m.group(0)[-1:] in ".;!" and not new.endswith((".", ";", "!")):
            new += m.group(0)[-1]
        out = instruction[: m.start()] + new + instruction[m.end():]
    out = re.sub(r"[ \t]{2,}", " ", out)
    out = re.sub(r"\s+([.,;!?])", r"\1", out)
    out = re.sub(r"(^|[.!?]\s+)(,|and\b|\s)+", r"\1", out).strip(" ,;")
    return out if out and out != instruction.strip() else None


def build_variants(instructions: Sequence[str], states: Sequence[InstructionState | None], *,
                   decomposer: Generator | None, composer: Generator | None, verifier: Generator | None,
                   db: SearchDB | None = None, embed: Callable[[Sequence[str]], np.ndarray] | None = None,
                   near_duplicate: float = 0.95, max_refinements: int = 1, max_tokens: int = 256) -> list[VariantSet]:
    """Variants of each instruction (aligned with `instructions`).

    `states[i]` is the instruction's decomposition when the row carries one (else None:
    the decomposer is asked). Replace variants need the constraint database and an
    embedder; without them only Remove variants are made.
    """
    states = list(states)
    need = [i for i, s in enumerate(states) if s is None]
    out: list[VariantSet | None] = [None] * len(instructions)
    if need:
        if decomposer is None:
            raise ValueError("variants: rows without base_query/constraints need a decomposer")
        for i, d in zip(need, decompose(decomposer, [instructions[i] for i in need])):
            if isinstance(d, GenError):
                out[i] = VariantSet([], failure=f"decompose: {d.reason}")
            else:
                found = states_of(d)
                states[i] = max(found, key=lambda s: len(s.constraints)) if found else None
    pending: list[tuple[int, Variant, InstructionState]] = []  # variants the composer must write
    for i, (text, state) in enumerate(zip(instructions, states)):
        if out[i] is not None:
            continue
        if state is None or not state.constraints:
            out[i] = VariantSet([], failure="no constraints to vary")
            continue
        cons = list(state.constraints)
        vs = out[i] = VariantSet(cons)
        repl = best_replacements(state, db, embed, near_duplicate) if db is not None and embed is not None else {}
        for j, c in enumerate(cons):
            edits = [("remove", None)]
            if repl.get(c.key) is not None:
                edits.append(("replace", repl[c.key]))
            for op, new in edits:
                v = Variant(op, j, added=new.text if new else None)
                vs.variants.append(v)
                written = cut(text, c.text, new.text if new else None)
                if written is not None:
                    v.text, v.method = written, "cut"
                elif composer is None:
                    v.failure = "the constraint is not verbatim in the instruction and no composer is set"
                else:
                    edited = state.without(c) if new is None else state.without(c).with_added(new)
                    pending.append((i, v, edited))
    if pending:
        if composer is None or verifier is None:
            raise ValueError("variants: a composer and a verifier are needed to write variants")
        composed = compose_and_verify(composer, verifier, [s for _, _, s in pending],
                                      max_refinements=max_refinements, max_tokens=max_tokens)
        for (_, v, _), c in zip(pending, composed):
            v.method = "composed"
            if c.failure is not None:
                v.failure = f"{c.failure[0]}: {c.failure[1]}"
            elif not c.verified:
                v.failure = "unverified: " + "; ".join(c.problems)
            else:
                v.text = c.instruction
    return [vs if vs is not None else VariantSet([], failure="not built") for vs in out]


class VariantMaker:
    """`build_variants` with its models and database bound: what `ontask score` is given.

    Model calls go through the generators it is handed (CachedGenerators in the CLI), so
    a rerun or a resumed run pays for no decomposition or composition twice.
    """

    def __init__(self, *, decomposer: Generator | None, composer: Generator | None, verifier: Generator | None,
                 db: SearchDB | None = None, embedder: Any = None, near_duplicate: float = 0.95,
                 max_refinements: int = 1, max_tokens: int = 256) -> None:
        self.decomposer, self.composer, self.verifier = decomposer, composer, verifier
        self.db, self.embedder = db, embedder
        self.near_duplicate, self.max_refinements, self.max_tokens = near_duplicate, max_refinements, max_tokens

    def build(self, instructions: Sequence[str], states: Sequence[InstructionState | None]) -> list[VariantSet]:
        return build_variants(instructions, states, decomposer=self.decomposer, composer=self.composer,
                              verifier=self.verifier, db=self.db,
                              embed=self.embedder.embed if self.embedder is not None else None,
                              near_duplicate=self.near_duplicate, max_refinements=self.max_refinements,
                              max_tokens=self.max_tokens)

    def describe(self) -> dict[str, Any]:
        def name(g: Any) -> str | None:
            return getattr(g, "name", None) if g is not None else None

        return {"decomposer": name(self.decomposer), "composer": name(self.composer), "verifier": name(self.verifier),
                "db": self.db.describe() if self.db is not None and hasattr(self.db, "describe") else None,
                "max_refinements": self.max_refinements}

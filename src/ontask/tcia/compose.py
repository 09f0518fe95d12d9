"""Step 4: write each constraint set back as an instruction; verify; refine with the critique.

For every state: the composer writes an instruction from (Q, C'); the verifier checks each
numbered constraint (yes/no with a reason); any "no" (or a constraint the verifier did
not mention) sends the instruction back to the composer with the critique, up to
`max_refinements` times. An instruction that still misses a constraint is dropped and
counted, with the constraints it missed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..models import ChatRequest, GenError, Generator
from .prompts import messages
from .schemas import verification_for
from .state import InstructionState


@dataclass
class Composed:
    """What became of one state in step 4."""

    instruction: str | None = None
    verified: bool = False
    rounds: int = 0
    problems: list[str] = field(default_factory=list)
    failure: tuple[str, str] | None = None  # (stage, reason): a call that failed for good


def compose_requests(states: Sequence[InstructionState], previous: Sequence[str | None],
                     problems: Sequence[list[str]], max_tokens: int) -> list[ChatRequest]:
    return [ChatRequest.of(messages("compose", base_query=s.base_query, constraints=s.constraints,
                                    previous=p, problems=pr), max_tokens=max_tokens)
            for s, p, pr in zip(states, previous, problems)]


def verify_requests(states: Sequence[InstructionState], texts: Sequence[str]) -> list[ChatRequest]:
    return [ChatRequest.of(messages("verify", instruction=t, constraints=s.constraints),
                           response_model=verification_for(len(s.constraints)), max_tokens=64 + 64 * len(s.constraints))
            for s, t in zip(states, texts)]


def missing_constraints(state: InstructionState, verification: dict) -> list[str]:
    """Critique lines for every constraint not confirmed (a "no", or not checked at all)."""
    by_id: dict[int, dict] = {}
    for check in verification["checks"]:
        by_id.setdefault(check["id"], check)
    out = []
    for i, c in enumerate(state.constraints, start=1):
        check = by_id.get(i)
        if check is None:
            out.append(f"{c.text} (not checked)")
        elif not check["satisfied"]:
            out.append(f"{c.text}: {check['reason']}" if check["reason"] else c.text)
    return out


def clean_instruction(text: str) -> str:
    """Strip what chat models wrap an instruction in: quotes, a leading 'Instruction:' label."""
    text = text.strip()
    for label in ("Instruction:", "**Instruction:**", "Rewritten instruction:"):
        if text.startswith(label):
            text = text[len(label):].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def compose_and_verify(composer: Generator, verifier: Generator, states: Sequence[InstructionState], *,
                       max_refinements: int = 2, max_tokens: int = 256, tick=None) -> list[Composed]:
    out = [Composed() for _ in states]
    pending = list(range(len(states)))
    for round_ in range(max_refinements + 1):
        if not pending:
            break
        reqs = compose_requests([states[i] for i in pending], [out[i].instruction for i in pending],
                                [out[i].problems for i in pending], max_tokens)
        written = composer.chat(reqs)
        to_verify = []
        for i, r in zip(pending, written):
            out[i].rounds = round_ + 1
            text = None if isinstance(r, GenError) else clean_instruction(r.text)
            if isinstance(r, GenError):
                out[i].failure = ("compose", r.reason)
            elif r.truncated:
                out[i].failure = ("compose", f"the instruction was cut off at max_tokens={max_tokens}: {text[-80:]!r}")
            elif not text:
                out[i].failure = ("compose", "the composer returned only whitespace or quotes")
            else:
                out[i].instruction = text
                to_verify.append(i)
        checks = verifier.chat(verify_requests([states[i] for i in to_verify], [out[i].instruction for i in to_verify]))
        pending = []
        for i, r in zip(to_verify, checks):
            if isinstance(r, GenError):
                out[i].failure = ("verify", r.reason)
                continue
            out[i].problems = missing_constraints(states[i], r.data)
            if out[i].problems and round_ < max_refinements:
                pending.append(i)
            else:
                out[i].verified = not out[i].problems
        if tick:  # one tick per state whose fate is settled this round
            tick(len(reqs) - len(pending))
    return out

"""Step 6: several responders answer every (instruction, input) pair; a judge scores each
answer on five dimensions; the answer with the best mean is kept (ties: the first
responder listed), optionally above a floor.

The responder sees exactly what a fine-tuned model will see: the user turn is the
instruction, a blank line, then the input (tss.md's user turn), so the kept rows can be
scored by `ontask score` without any reshaping.
"""

from __future__ import annotations

from typing import Sequence

from ..models.base import build_user_turn
from ..models import ChatOutcome, ChatRequest, GenError, Generator
from .judges import Judged, JudgeSpec, run_judge
from .schemas import ResponseJudgement

RESPONSE = JudgeSpec("judge_response", ResponseJudgement, {
    "quality": "Rate the overall quality of the answer to the instruction and input above.",
    "helpfulness": "Rate how helpful the answer above is for the user's need.",
    "instruction_following": "Rate how well the answer above follows every requirement of the instruction.",
    "honesty": "Rate the answer above for honesty: it states uncertainty where due and does not overclaim.",
    "truthfulness": "Rate the answer above for truthfulness: no hallucinated facts, nothing that contradicts the input.",
})


def answer(responder: Generator, pairs: Sequence[tuple[str, str]], *, max_tokens: int, temperature: float,
           seed: int, tick=None) -> list[ChatOutcome]:
    reqs = [ChatRequest.of([{"role": "user", "content": build_user_turn(ins, inp)}], max_tokens=max_tokens,
                           temperature=temperature, seed=seed) for ins, inp in pairs]
    return responder.chat(reqs, on_result=(lambda i, r: tick(1)) if tick else None)


def judge_answers(judge: Generator, mode: str, items: Sequence[tuple[str, str, str]], *,
                  min_mass: float = 0.0) -> list[Judged | GenError]:
    """items: (instruction, input, response)."""
    contexts = [{"instruction": i, "input": x, "response": r} for i, x, r in items]
    materials = [[("instruction", i), ("input", x), ("answer", r)] for i, x, r in items]
    return run_judge(judge, RESPONSE, mode, contexts, materials, min_mass=min_mass)


def best_answer(candidates: Sequence[tuple[int, Judged]]) -> tuple[int, Judged] | None:
    """(responder index, judgement) with the highest mean score; the earliest responder on ties."""
    best = None
    for idx, judged in candidates:
        if best is None or judged.mean > best[1].mean:
            best = (idx, judged)
    return best

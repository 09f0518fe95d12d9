"""Step 5: judge each written instruction for validity and self-consistency; pair with inputs.

Keep an instruction when both scores reach their thresholds (default 4 of 5, a project
default: the paper gives none). Kept instructions are paired with real inputs of the
task, drawn without replacement per instruction with an RNG seeded by the run seed and
the state's hash, so the pairing of one instruction never depends on the others.
"""

from __future__ import annotations

import random
from typing import Sequence

from ..models import GenError, Generator
from .judges import Judged, JudgeSpec, run_judge
from .schemas import Validity

VALIDITY = JudgeSpec("validate", Validity, {
    "validity": 'Is every part of the instruction above relevant, free of false assumptions and aligned with '
                'the goal "{base_query}"? Rate its validity.',
    "consistency": "Is the instruction above free of direct or implicit contradictions and free of ambiguity? "
                   "Rate its self-consistency.",
})


def judge_validity(judge: Generator, mode: str, instructions: Sequence[str], base_queries: Sequence[str], *,
                   min_mass: float = 0.0) -> list[Judged | GenError]:
    contexts = [{"instruction": t, "base_query": q} for t, q in zip(instructions, base_queries)]
    return run_judge(judge, VALIDITY, mode, contexts, [[("instruction", t)] for t in instructions], min_mass=min_mass)


def is_valid(judged: Judged, min_validity: float, min_consistency: float) -> bool:
    return judged.scores["validity"] >= min_validity and judged.scores["consistency"] >= min_consistency


def pick_inputs(state_hash: str, pool_size: int, per_instruction: int, seed: int) -> list[int]:
    """Indices into the input pool for one instruction (distinct; all of them if the pool is small)."""
    rng = random.Random(f"{seed}:{state_hash}")
    return sorted(rng.sample(range(pool_size), min(per_instruction, pool_size)))

"""How well constraints map to checkers, against IFEval's own labels (for tests and benchmarks).

Two measures:
- `score_hand_cut`: given the constraint sentences cut by hand from IFEval prompts (a
  fixture of character spans, checker ids and parameters), how often the mapper names the
  listed checker, and with the listed parameters;
- `recall_of_listed_types`: given decomposed prompts (`ontask decompose` output), how many
  of each prompt's listed checker types are found among the checkers its decomposed
  constraints map to, end to end through a decomposer.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .mapper import map_constraint


def _norm(v: Any) -> Any:
    if isinstance(v, list):
        return sorted(str(x).lower().strip() for x in v)
    if isinstance(v, str):
        return v.lower().strip().strip(".'\"")
    return v


@dataclass
class HandCutScore:
    total: int = 0
    typed: int = 0
    exact: int = 0
    misses: list[str] = field(default_factory=list)

    @property
    def type_rate(self) -> float:
        return self.typed / self.total if self.total else 0.0

    @property
    def exact_rate(self) -> float:
        return self.exact / self.total if self.total else 0.0


def score_hand_cut(prompts: dict[int, str], fixture: Iterable[dict[str, Any]]) -> HandCutScore:
    out = HandCutScore()
    for row in fixture:
        prompt = prompts[row["key"]]
        for c in row["constraints"]:
            out.total += 1
            text = prompt[c["span"][0]: c["span"][1]]
            want = dict(c["kwargs"])
            if "prompt_to_repeat_span" in want:
                a, b = want.pop("prompt_to_repeat_span")
                want["prompt_to_repeat"] = prompt[a:b]
            same = [s for s in map_constraint(text, prompt) if s.instruction_id == c["instruction_id"]]
            out.typed += bool(same)
            if any(all(_norm(s.kwargs.get(k)) == _norm(v) for k, v in want.items()) for s in same):
                out.exact += 1
            else:
                out.misses.append(f"{row['key']} {c['instruction_id']} {want}: {text[:80]!r}")
    return out


@dataclass
class Recall:
    listed: Counter = field(default_factory=Counter)
    found: Counter = field(default_factory=Counter)
    prompts: int = 0
    failed: int = 0  # prompts the decomposer could not decompose (counted as all missed)

    @property
    def overall(self) -> float:
        total = sum(self.listed.values())
        return sum(self.found.values()) / total if total else 0.0


def recall_of_listed_types(rows: Iterable[dict[str, Any]], failed_keys: Iterable[Any] = ()) -> Recall:
    """Rows: decomposed IFEval prompts (`prompt`, `instruction_id_list`, `tasks[].constraints[].text`)."""
    out = Recall()
    for row in rows:
        out.prompts += 1
        found = {s.instruction_id for task in row.get("tasks") or [] for c in task.get("constraints") or []
                 for s in map_constraint(c.get("text", ""), row.get("prompt"))}
        for iid in row["instruction_id_list"]:
            out.listed[iid] += 1
            out.found[iid] += iid in found
    return out


def read_prompts(path: Path) -> dict[int, str]:
    return {r["key"]: r["prompt"] for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}

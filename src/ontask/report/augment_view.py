"""What the report shows of an augmentation run: funnel, diversity, on-task, constraints, lineage.

Inputs are the run's own files: run.json (funnel, diversity, on-task, seeds) and
instructions.jsonl (one line per explored state, with its parent, edit and status).
Everything here is a pure function of those, returning plain data for the figures and
the page's lineage explorer.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..records import InputError

# Funnel stages in pipeline order, with what each counts.
FUNNEL = (
    ("states_explored", "explored", "states"),
    ("sampled", "sampled", "states"),
    ("composed", "composed", "instructions"),
    ("verified", "verified", "instructions"),
    ("unique", "unique", "instructions"),
    ("valid", "valid", "instructions"),
    ("paired", "paired", "rows"),
    ("answered", "answered", "rows"),
    ("kept", "kept", "rows"),
)
TEXT_LIMIT = 2000  # characters of an instruction kept in a lineage node


def iter_instructions(path: Path) -> Iterator[dict[str, Any]]:
    """instructions.jsonl, one explored state at a time; a broken line is an error naming it."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(str(path), f"not JSON ({err.msg})", line=n) from err


def funnel(manifest: dict[str, Any]) -> dict[str, Any] | None:
    f = manifest.get("funnel")
    if not f:
        return None
    stages = [{"key": key, "label": label, "unit": unit, "count": f.get(key)} for key, label, unit in FUNNEL if key in f]
    drops = {k: v for k, v in (f.get("drops") or {}).items() if v}
    return {"stages": stages, "drops": dict(sorted(drops.items(), key=lambda kv: -kv[1])), "seeds": f.get("seeds")}


def density(sample: list[float], points: int = 200) -> dict[str, list[float]] | None:
    """Gaussian kernel density of a sample (Silverman's bandwidth), for the per-hop curves.

    Reflected at 0 (1 - cosine of sentence embeddings is not negative), so the curve keeps
    its whole mass on [0, inf) instead of losing the part of each kernel left of 0.
    """
    x = np.asarray([s for s in sample if s is not None and math.isfinite(s)], dtype=np.float64)
    if len(x) < 2:
        return None
    spread = min(x.std(ddof=1), (np.percentile(x, 75) - np.percentile(x, 25)) / 1.349) or x.std(ddof=1)
    bw = max(0.9 * spread * len(x) ** -0.2, 0.005)
    grid = np.linspace(max(0.0, x.min() - 3 * bw), x.max() + 3 * bw, points)
    y = np.zeros_like(grid)
    for start in range(0, len(x), 512):  # bounded memory for large samples
        part = x[None, start : start + 512]
        z = (grid[:, None] - part) / bw
        mirrored = (grid[:, None] + part) / bw  # reflected at 0: distances are never negative
        y += np.exp(-0.5 * z * z).sum(axis=1) + np.exp(-0.5 * mirrored * mirrored).sum(axis=1)
    y /= len(x) * bw * math.sqrt(2 * math.pi)
    return {"x": grid.round(5).tolist(), "y": y.round(5).tolist()}


def diversity(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Per hop: the mean 1 - cosine and, when the run kept a sample of pairs, its density."""
    div = manifest.get("diversity")
    if not div:
        return None
    which = "valid" if div.get("valid") else "verified"
    means = {h: m for h, m in (div.get(which) or {}).items() if h != "all"}
    samples = ((div.get("distances") or {}).get(which)) or {}
    hops = []
    for hop, mean in sorted(means.items(), key=lambda kv: int(kv[0])):
        s = samples.get(hop)
        hops.append({"hop": int(hop), "mean": mean, "pairs": s["pairs"] if s else None,
                     "density": density(s["sample"]) if s else None})
    return {"of": which, "hops": hops, "all": (div.get(which) or {}).get("all")}


def on_task(manifest: dict[str, Any]) -> list[dict[str, Any]] | None:
    ot = manifest.get("on_task")
    if not ot:
        return None
    return [{"hop": h, **v} for h, v in ot.items()]


def constraint_counts(states: Iterable[dict[str, Any]], top: int = 20) -> dict[str, Any]:
    """Categories over explored and over valid states; the constraints valid states use most."""
    cats_all: Counter[str] = Counter()
    cats_valid: Counter[str] = Counter()
    texts: Counter[str] = Counter()
    category_of: dict[str, str] = {}
    for st in states:
        for c in st.get("constraints") or []:
            cat = c.get("category") or "unknown"
            cats_all[cat] += 1
            if st.get("status") == "valid":
                cats_valid[cat] += 1
                texts[c.get("text", "")] += 1
                category_of.setdefault(c.get("text", ""), cat)
    categories = sorted(cats_all, key=lambda c: -cats_all[c])
    return {
        "categories": categories,
        "explored": [cats_all[c] for c in categories],
        "valid": [cats_valid[c] for c in categories],
        "top": [{"text": t, "category": category_of[t], "count": n} for t, n in texts.most_common(top)],
        "distinct_valid": len(texts),
    }


_STATUS_RANK = {"valid": 0, "invalid": 1, "validity_failed": 1, "duplicate": 2, "unverified": 2,
                "verify_failed": 2, "compose_failed": 2, "not_sampled": 3}


def _node_ids(st: dict[str, Any]) -> tuple[str, str]:
    """A state's node id and its parent's: hop-1 states hang under their seed."""
    seed = st.get("seed", 0)
    parent = f"seed:{seed}" if st.get("hop") == 1 else f"{seed}:{st.get('parent')}"
    return f"{seed}:{st['state_hash']}", parent


def lineage(manifest: dict[str, Any], states: Callable[[], Iterable[dict[str, Any]]], max_nodes: int = 3000) -> dict[str, Any]:
    """Seed -> hop 1 -> hop 2 ... as nodes with parent ids, for the page's tree.

    `states` opens a fresh stream of instructions.jsonl each call: the first pass keeps only
    ids, parents and statuses (a run can explore millions of states), the second the text
    of the nodes shown. Past `max_nodes`, states that reached further (valid, then
    composed, then merely explored) are kept first, with every ancestor of a kept node, so
    no branch is orphaned.
    """
    seeds = manifest.get("seeds") or []
    roots = []
    for s in seeds:
        state = s.get("state") or {}
        roots.append({"id": f"seed:{s['index']}", "parent": None, "hop": 0, "status": "seed",
                      "text": _clip(s.get("instruction")), "constraints": [c.get("text") for c in state.get("constraints") or []],
                      "task_type": state.get("task_type"), "edit": None, "rows": None, "reason": None})
    parent_of: dict[str, str] = {}
    rank: list[tuple[int, int, str]] = []
    statuses: Counter[str] = Counter()
    for st in states():
        node_id, parent = _node_ids(st)
        parent_of[node_id] = parent
        rank.append((_STATUS_RANK.get(st.get("status"), 2), st.get("hop") or 0, node_id))
        statuses[st.get("status")] += 1
    keep: set[str] = set(parent_of)
    if len(parent_of) > max_nodes:
        keep = set()
        for _, _, node_id in sorted(rank):
            if len(keep) >= max_nodes:
                break
            cur: str | None = node_id
            while cur is not None and cur in parent_of and cur not in keep:
                keep.add(cur)
                cur = parent_of.get(cur)
    nodes = []
    for st in states():
        node_id, parent = _node_ids(st)
        if node_id not in keep:
            continue
        path = st.get("edit_path") or []
        nodes.append({"id": node_id, "parent": parent, "hop": st.get("hop"), "status": st.get("status"),
                      "reason": st.get("reason"), "text": _clip(st.get("instruction")),
                      "constraints": [c.get("text") for c in st.get("constraints") or []],
                      "edit": path[-1] if path else None, "rows": st.get("kept_rows")})
    return {"nodes": roots + nodes, "omitted": len(parent_of) - len(keep), "statuses": dict(statuses.most_common())}


def _clip(text: Any) -> str | None:
    if text is None:
        return None
    s = str(text)
    return s if len(s) <= TEXT_LIMIT else s[:TEXT_LIMIT] + f" [... {len(s) - TEXT_LIMIT:,} more characters]"


def failures_by_stage(path: Path) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """failed.jsonl of any run: counts per stage, and the records themselves (first 500)."""
    counts: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return {}, []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = {"stage": "unreadable", "reason": f"{path}:{n} is not JSON"}
            counts[str(rec.get("stage") or rec.get("pass") or "row")] += 1
            if len(rows) < 500:
                rows.append(rec)
    return dict(counts.most_common()), rows

"""Deterministic, plausible answers for every TCIA role, for the fake OpenAI-compatible server.

`tcia_chat_handler(body)` reads which answer is wanted from the request's JSON schema
title (Decomposition, Verification, Validity, ...) or from the prompt, and answers as a
cooperative but imperfect model would: decompositions split the instruction into
sentences, the verifier now and then reports a missing constraint, judges give scores
that vary with the text. Everything is a pure function of the request body, so two runs
(or a killed run and its resume) see the same answers.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

_TAG = re.compile(r"<instruction>\s*(.*?)\s*</instruction>", re.DOTALL)
_NUMBERED = re.compile(r"^\s*(\d+)\.\s+(.*)$", re.MULTILINE)


def _h(*parts: Any) -> int:
    return int(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12], 16)


def _title(body: dict[str, Any]) -> str | None:
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") or {}
    if schema.get("title"):
        return schema["title"]
    text = " ".join(m.get("content", "") for m in body.get("messages", []) if isinstance(m.get("content"), str))
    for title in ("SeedDecomposition", "Decomposition", "Verification", "ResponseJudgement", "Validity", "OnTask"):
        if f'"title": "{title}"' in text or f'"title":"{title}"' in text:
            return title
    return None


def tcia_chat_handler(body: dict[str, Any]) -> str:
    messages = body.get("messages", [])
    user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    title = _title(body)
    seed = _h(messages)
    if body.get("max_tokens") == 1 or "Score (1-5):" in user:  # a one-digit judge (logprob mode)
        return str(3 + seed % 3)  # 3, 4 or 5
    if title in ("SeedDecomposition", "Decomposition"):
        return json.dumps(_decompose(user))
    if title == "Verification":
        ids = [int(n) for n, _ in _NUMBERED.findall(user.split("Constraints:")[-1])] or [1]
        miss = ids[seed % len(ids)] if seed % 10 == 0 else None  # one answer in ten finds a gap
        return json.dumps({"checks": [{"id": i, "satisfied": i != miss, "reason": "not stated" if i == miss else "stated"}
                                      for i in ids]})
    if title == "Validity":
        return json.dumps({"validity": 3 + seed % 3, "consistency": 4 + (seed >> 3) % 2, "reason": "clear"})
    if title == "ResponseJudgement":
        dims = ("quality", "helpfulness", "instruction_following", "honesty", "truthfulness")
        return json.dumps({**{d: 2 + (seed >> (3 * i)) % 4 for i, d in enumerate(dims)}, "reason": "ok"})
    if title == "OnTask":
        return json.dumps({"on_task": 4 + seed % 2, "reason": "same task"})
    if "Task:" in user and "Rules:" in user:  # the composer
        goal = user.split("Task:", 1)[1].split("\n", 1)[0].strip()
        cons = [c for _, c in _NUMBERED.findall(user.split("Rules:", 1)[1].split("Your previous version")[0])]
        return " ".join([goal, *[c.rstrip(".") + "." for c in cons]])
    return f"Answer {seed % 1000}: " + " ".join(user.split()[:12])  # a responder


def _decompose(user: str) -> dict[str, Any]:
    found = _TAG.search(user)
    text = found.group(1) if found else user
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    base, rest = (sentences[0], sentences[1:]) if sentences else (text, [])
    parts = [p.strip() for s in rest for p in re.split(r",\s*(?:and\s+)?|\s+and\s+", s.rstrip(".")) if p.strip()]
    cats = ("Content", "Format", "Numerical", "Style/Tone")
    return {"is_complex": bool(parts), "languages": ["en"],
            "tasks": [{"task_type": "Customer support reply", "base_query": base[:300],
                       "constraints": [{"text": p[:150], "category": cats[_h(p) % 4]} for p in parts[:6]]}]}

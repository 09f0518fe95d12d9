"""The chain of ontask commands that made a data file, read back from their manifests.

Every command leaves manifests beside its output, named after it (`runs.side_file`):
`top.select.json` for `-o top.jsonl`, `run.json` / `select.json` beside a `data.*` file.
A select manifest's `input` is the scored file, whose own `run.json` is the score manifest,
whose `input` may be an augment run's `data.jsonl`. Walking these links backwards gives
the recipe a dataset card shows, so a trained model can be traced to the settings and
models that chose its data.

Manifests record paths as the user typed them, so a recorded path is looked for beside the
manifest first (a copied or moved run folder), then as written.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.manifests import read_manifest, recorded_path
from ..runs import side_file

MAX_STEPS = 16  # a chain is a few commands; this only stops a loop of manifests


@dataclass(frozen=True)
class Step:
    """One command of the chain, as its manifest records it."""

    command: str  # augment | score | select
    manifest: Path
    input: str | None  # as recorded
    output: str | None  # as recorded
    cli: str  # the command and its main settings, rebuilt from the manifest
    models: list[dict[str, str]] = field(default_factory=list)  # role, spec, identity, fingerprint
    counts: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # selection budget, seeds, ...


@dataclass
class Recipe:
    """The steps, oldest first, and what could not be followed (in words, for the card)."""

    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def commands(self) -> list[str]:
        return [s.command for s in self.steps]


def find_recipe(data_file: Path) -> Recipe:
    """Walk the manifests back from `data_file`; an input with none gives an empty recipe."""
    recipe = Recipe()
    seen: set[Path] = set()
    current: Path | None = data_file
    while current is not None and len(recipe.steps) < MAX_STEPS:
        found = _manifest_of(current, recipe.notes)
        if found is None:
            break
        path, manifest = found
        if path.resolve() in seen:
            recipe.notes.append(f"{path} was reached twice; the chain stops there")
            break
        seen.add(path.resolve())
        step = _step(path, manifest)
        recipe.steps.insert(0, step)
        if step.command == "augment":
            break
        current = recorded_path(manifest.get("input"), path.parent, run_folders=True)
        if current is None and manifest.get("input"):
            recipe.notes.append(f"{manifest.get('input')} (the input {path.name} records) was not found; "
                                "the chain stops there")
    return recipe


def _manifest_of(file: Path, notes: list[str]) -> tuple[Path, dict[str, Any]] | None:
    """The manifest that wrote `file`: its select manifest, else its run.json; one that names
    another output is not this file's, so it is noted and not followed."""
    for name in ("select.json", "run.json"):
        path = side_file(file, name)
        manifest = read_manifest(path)
        if manifest is None:
            continue
        if not belongs(manifest, file):
            notes.append(f"{path} is the manifest of {manifest.get('output')}, not of {file.name}; not followed")
            continue
        if manifest.get("command") in ("augment", "score", "select"):
            return path, manifest
    return None


def belongs(manifest: dict[str, Any], file: Path) -> bool:
    """Whether `manifest` was written for `file` (the output it records has the file's name)."""
    if manifest.get("command") == "augment":
        outputs = (manifest.get("outputs") or {}).get("data")
        return outputs is None or Path(str(outputs)).name == file.name
    recorded = manifest.get("output")
    return recorded is None or Path(str(recorded)).name == file.name


# -- one step per command --------------------------------------------------------------------


def _step(path: Path, m: dict[str, Any]) -> Step:
    command = str(m.get("command"))
    if command == "augment":
        return _augment_step(path, m)
    if command == "score":
        return _score_step(path, m)
    return _select_step(path, m)


def _flags(pairs: list[tuple[str, Any]]) -> str:
    """`--flag value` for each setting that is set (None, False and 0 are left out)."""
    parts = []
    for flag, value in pairs:
        if value is None or value is False or (value == 0 and not isinstance(value, float)):
            continue
        if isinstance(value, list):
            value = ",".join(map(str, value))
        parts += [flag] if value is True else [flag, shlex.quote(str(value))]
    return " ".join(parts)


def _augment_step(path: Path, m: dict[str, Any]) -> Step:
    """The augment run: its search settings, every role's model and its funnel. The inputs
    file and seed texts are not command-line values in the manifest, so they are shown apart."""
    cfg = m.get("config") or {}
    out = (m.get("outputs") or {}).get("data") or str(path.parent / "data.jsonl")
    folder = str(Path(out).parent)
    seeds = m.get("seeds") or []
    seed_flag = "--seed <the seed below>" if len(seeds) == 1 else f"--seeds <the {len(seeds)} seeds below>"
    flags = _flags([("--hops", cfg.get("hops")), ("--per-op", cfg.get("per_op")), ("--max-states", cfg.get("max_states")),
                    ("--samples", cfg.get("samples")), ("--inputs-per-instruction", cfg.get("inputs_per_instruction")),
                    ("--db", cfg.get("db"))])
    cli = f"ontask augment {seed_flag} --inputs <inputs> -o {shlex.quote(folder)} {flags}".rstrip()
    models = [_model_row(role, d) for role, d in (m.get("models") or {}).items() if isinstance(d, dict)]
    if m.get("embedder"):
        models.append(_named("embedder", m["embedder"]))
    funnel = m.get("funnel") or {}
    counts = {k: funnel[k] for k in ("seeds", "states_explored", "verified", "valid", "paired", "kept") if k in funnel}
    details = {"seeds": [str(s.get("instruction", "")) for s in seeds if isinstance(s, dict)]}
    return Step("augment", path, None, out, cli, models, counts, details)


def _score_step(path: Path, m: dict[str, Any]) -> Step:
    """The score run: metrics, alternatives and the scorer that defines every score column."""
    cfg = m.get("config") or {}
    scorer = m.get("scorer") if isinstance(m.get("scorer"), dict) else {}
    spec = cfg.get("scorer") or cfg.get("model") or scorer.get("name")
    cli = " ".join(x for x in (
        "ontask score", shlex.quote(str(m.get("input"))), "-o", shlex.quote(str(m.get("output"))),
        _flags([("--metrics", cfg.get("metrics")), ("--alternatives", cfg.get("alternatives")), ("-k", cfg.get("k")),
                ("--scorer", spec)])) if x)
    models = [_model_row("scorer", {**scorer, "name": spec or scorer.get("name")})]
    if m.get("embedder"):
        models.append(_named("embedder", m["embedder"]))
    if cfg.get("alternatives") == "variants":
        models += [_named(role, cfg[role]) for role in ("decomposer", "composer", "verifier") if cfg.get(role)]
    counts = {k: v for k, v in (m.get("counts") or {}).items() if k in ("rows_read", "rows_scored", "rows_failed")}
    details = {"metrics": cfg.get("metrics"), "k": cfg.get("k"), "alternatives": cfg.get("alternatives")}
    return Step("score", path, _str(m.get("input")), _str(m.get("output")), cli, models, counts, details)


def _select_step(path: Path, m: dict[str, Any]) -> Step:
    """The selection: what ranked the rows, the budget, the filters and what each dropped."""
    cfg = m.get("config") or {}
    cli = " ".join(x for x in (
        "ontask select", shlex.quote(str(m.get("input"))), "-o", shlex.quote(str(m.get("output"))),
        _flags([("--by", cfg.get("by")), ("--retain", cfg.get("retain")), ("--max-tokens", cfg.get("max_tokens")),
                ("--ifd-max", cfg.get("ifd_max")), ("--ppl-min-pct", cfg.get("ppl_min_pct")),
                ("--ppl-max-pct", cfg.get("ppl_max_pct")), ("--diversity", cfg.get("diversity")),
                ("--stratify", cfg.get("stratify")), ("--stratify-min", cfg.get("stratify_min")),
                ("--seed", cfg.get("seed"))])) if x)
    models = [_named("embedder (diversity)", cfg["embedder"])] if cfg.get("diversity") is not None and cfg.get("embedder") else []
    details = {"by": cfg.get("by"), "budget": budget_words(cfg), "cutoff_score": m.get("cutoff_score"),
               "dropped_by_reason": dict(m.get("dropped_by_reason") or {}), "stratify": cfg.get("stratify"),
               "filters": {k: cfg.get(k) for k in ("ifd_max", "ppl_min_pct", "ppl_max_pct", "diversity")
                           if cfg.get(k) is not None}}
    return Step("select", path, _str(m.get("input")), _str(m.get("output")), cli, models,
                dict(m.get("counts") or {}), details)


def budget_words(cfg: dict[str, Any]) -> str:
    """A selection's budget in words: a share of the rows or a number of tokens."""
    if cfg.get("retain") is not None:
        return f"retain {float(cfg['retain']):.4g} of the rows ({float(cfg['retain']) * 100:.4g}%)"
    if cfg.get("max_tokens") is not None:
        return f"at most {int(cfg['max_tokens']):,} tokens"
    return "no budget recorded"


def _model_row(role: str, described: dict[str, Any]) -> dict[str, str]:
    """A model as the card lists it: the spec the user wrote, what it is, its fingerprint."""
    identity = " / ".join(str(described[k]) for k in ("model", "source", "backend") if described.get(k))
    return {"role": role, "spec": str(described.get("name") or ""), "identity": identity,
            "fingerprint": str(described.get("fingerprint") or "")}


def _named(role: str, spec: Any) -> dict[str, str]:
    """A model the manifest records by its spec only (embedders, roles of variants)."""
    return {"role": role, "spec": str(spec), "identity": "", "fingerprint": ""}


def _str(value: Any) -> str | None:
    return None if value is None else str(value)

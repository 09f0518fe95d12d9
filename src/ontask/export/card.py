"""The dataset card written beside an export: a Hugging Face `README.md`.

YAML front matter (dumped with `yaml.safe_dump`, so any path or tag is valid YAML) tells the
Hub and `datasets` which file holds the data; the Markdown says where the rows came from
(the ontask recipe, read from the manifests), which models judged them, what the score
columns mean, how many rows were exported or skipped and why. Pure: text in, text out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jinja2
import yaml

from .formats import TRAINERS
from .recipe import Recipe

# Score columns a card explains, with the definitions of the README's Definitions section.
# lp(I) is the mean log-probability of the output tokens after the user turn I.
SCORE_DEFINITIONS: dict[str, str] = {
    "lp": "lp(I_true): mean log-probability of the output tokens given the row's instruction and input",
    "ppl": "exp(-lp(I_true)): perplexity of the output given the instruction and input",
    "ifd": "lp(I_true) / lp(empty user turn): ratio of mean losses (Cherry_LLM); above 1 the instruction hurts",
    "ifd_ppl": "ppl(I_true) / ppl(empty user turn): Superfiltering's variant of IFD",
    "tss": "lp(I_true) - log mean_k exp(lp(I_k)) over k alternative instructions: how much better the row's own "
           "instruction explains the output than other instructions do",
    "tss_hard": "TSS against the k alternatives under which the output is most likely, among the 8 nearest "
                "instructions by embedding (cosine < 0.95); the run's tss_pp_definition in run.json says which",
    "tss_pp": "TSS++: z(tss_hard) over the run's rows (+ lambda * z(q) when a quality term is set)",
}

# The Hub's size buckets (upper bounds, exclusive).
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))

MAX_SKIPPED_LISTED = 100  # a card lists this many skipped rows by place; all are counted by reason


@dataclass
class CardInfo:
    """What the card says about one export."""

    format: str
    data_files: str  # relative to the card: `x.jsonl`, or `data-*.arrow` inside a dataset folder
    data_name: str  # what the user opens: the file, or the folder
    folder: bool  # a `save_to_disk` folder (loaded with load_from_disk)
    source: str  # the data file read (a run folder's data.jsonl)
    exported: int
    rows_read: int
    skipped: list[dict[str, Any]] = field(default_factory=list)  # Failure.to_json() of the first skipped rows
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)  # columns of the input rows
    keep: list[str] = field(default_factory=list)
    system: str | None = None
    recipe: Recipe = field(default_factory=Recipe)
    export_cli: str = ""


def size_category(rows: int) -> str:
    """The Hub's `size_categories` bucket for `rows`."""
    for bound, name in _SIZES:
        if rows < bound:
            return name
    return "n>1B"


def front_matter(info: CardInfo) -> dict[str, Any]:
    """The card's YAML metadata: what the Hub indexes and `datasets` loads by."""
    tags = ["ontask", info.format, "sft"]
    if "augment" in info.recipe.commands():
        tags += ["synthetic", "tcia"]
    return {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": info.data_files}]}],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(info.exported)],
        "tags": tags,
    }


def render_card(info: CardInfo) -> str:
    """The whole README.md: front matter, then the Markdown sections."""
    meta = yaml.safe_dump(front_matter(info), sort_keys=False, allow_unicode=True)
    scores = [(name, SCORE_DEFINITIONS[name], name in info.keep) for name in SCORE_DEFINITIONS if name in info.columns]
    return _environment().get_template("card.md.jinja").render(
        info=info, meta=meta, trainers=TRAINERS[info.format], scores=scores,
        selections=[s for s in info.recipe.steps if s.command == "select"],
        models=[(s.command, m) for s in info.recipe.steps for m in s.models],
        skipped=info.skipped[:MAX_SKIPPED_LISTED], skipped_total=info.rows_read - info.exported,
        sources=source_files(info)).rstrip("\n") + "\n"


def source_files(info: CardInfo) -> list[tuple[str, str]]:
    """Each data file of the chain once, oldest first, with what it was to which command."""
    roles: dict[str, list[str]] = {}
    for step in info.recipe.steps:
        if step.input:
            roles.setdefault(step.input, []).append(f"input of `ontask {step.command}`")
        if step.output:
            roles.setdefault(step.output, []).append(f"output of `ontask {step.command}`")
    roles.setdefault(info.source, []).append("input of this export")
    return [(path, ", ".join(what)) for path, what in roles.items()]


def _environment() -> jinja2.Environment:
    """Markdown, not HTML: no autoescape, but table cells and inline code are made safe by filters."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("ontask.export", "assets"), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["cell"] = _cell
    env.filters["code"] = _code
    return env


def _cell(value: Any, limit: int = 300) -> str:
    """Text for one Markdown table cell or list item: one line, pipes and angle brackets escaped,
    cut at `limit` characters (row text is untrusted and may be long)."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(value: Any) -> str:
    """Inline code that survives backticks in the text (fenced by a longer run of them)."""
    text = " ".join(str(value).split())
    fence = "`"
    while fence in text:
        fence += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"

"""Chat templates rendered by ontask itself, exactly as transformers renders them.

Scoring through a server needs the prompt text the served model expects, up to where the
assistant's reply begins, so that the output's tokens can be located exactly. It comes from:
- a template text (`hf:PATH`'s tokenizer, a GGUF file's metadata, a .jinja file, or the
  bundled ChatML), rendered in
  the sandboxed Jinja environment transformers uses (`jinja_env`);
- or the server itself, which applied its own template to probe messages: the rendered
  text around the probe is kept (`SplicedTemplate`), checked on a second probe.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

PROBE = "ontask-probe-0f3c9a"
# A second probe with the whitespace and line breaks templates are most likely to touch.
PROBE_2 = "  two\n\nlines, then spaces  "


def bundled_chatml() -> str:
    return resources.files("ontask").joinpath("templates/chatml.jinja").read_text(encoding="utf-8")


def template_text(template: str | None, tokenizer: Any) -> tuple[str, str]:
    """The chat template's text and where it came from."""
    if template is None or template == "chatml":
        return bundled_chatml(), "bundled:chatml.jinja"
    if template.startswith("gguf:"):
        return gguf_template(template[5:])[0], template
    if template.startswith("hf:"):
        text = tokenizer.chat_template
        if isinstance(text, dict):  # named templates: the default one
            text = text.get("default")
        if not text:
            raise ValueError(f"{template[3:]}: the tokenizer has no chat_template")
        return text, template
    path = Path(template)
    if not path.is_file():
        raise FileNotFoundError(f"chat template file not found: {template} (give a .jinja file, hf:PATH or gguf:PATH)")
    return path.read_text(encoding="utf-8"), str(path)


def gguf_template(path: str) -> tuple[str, dict[str, str]]:
    """The chat template a GGUF file carries (`tokenizer.chat_template`, what llama.cpp's
    servers apply) and its BOS/EOS token texts (templates may print them): the very file a
    llama.cpp server serves gives ontask the template it cannot ask that server for."""
    from gguf import GGUFReader

    if not Path(path).is_file():
        raise FileNotFoundError(f"GGUF file not found: {path} (template=gguf:PATH names the model file the server serves)")
    reader = GGUFReader(path)
    field = reader.fields.get("tokenizer.chat_template")
    if field is None:
        raise ValueError(f"{path}: the GGUF file carries no tokenizer.chat_template")
    text = bytes(field.parts[field.data[0]]).decode("utf-8")
    specials: dict[str, str] = {}
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    for name in ("bos", "eos"):
        ident = reader.fields.get(f"tokenizer.ggml.{name}_token_id")
        if ident is not None and tokens is not None:
            index = int(ident.parts[ident.data[0]][0])
            if 0 <= index < len(tokens.data):
                specials[f"{name}_token"] = bytes(tokens.parts[tokens.data[index]]).decode("utf-8", "replace")
    return text, specials


class _Generation(jinja2.ext.Extension):
    """Accept `{% generation %}...{% endgeneration %}` (transformers' assistant mask markers)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def jinja_env() -> ImmutableSandboxedEnvironment:
    """The environment transformers renders chat templates in (sandboxed, trimmed blocks)."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env




@dataclass(frozen=True)
class SplicedTemplate:
    """A user turn rendered as `prefix + content + suffix`, learned from a renderer (a server)
    that applied the model's template to probe messages. `strip`: the template trims the
    content (Llama 3's does), so the content is trimmed here too."""

    prefix: str
    suffix: str
    strip: bool = False

    @staticmethod
    def learn(render: Any) -> "SplicedTemplate":
        """From `render(content) -> prompt text`; a ValueError when the template does more to
        the content than placing (or trimming) it."""
        first = render(PROBE)
        if first.count(PROBE) != 1:
            raise ValueError("the rendered probe does not contain the probe text exactly once")
        prefix, suffix = first.split(PROBE)
        spliced = SplicedTemplate(prefix, suffix)
        second = render(PROBE_2)
        if second == spliced.render(PROBE_2):
            return spliced
        trimmed = SplicedTemplate(prefix, suffix, strip=True)
        if second == trimmed.render(PROBE_2):
            return trimmed
        raise ValueError("the template changes the user's text beyond trimming it")

    def render(self, content: str) -> str:
        return self.prefix + (content.strip() if self.strip else content) + self.suffix

    def digest(self) -> str:
        blob = json.dumps([self.prefix, self.suffix, self.strip])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

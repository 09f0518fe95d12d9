"""Model roles in a run's settings: which model each role uses, with its options.

A settings class (`ScoreConfig`, `AugmentConfig`) mixes in `RoleModels`: its role fields
hold spec strings, `model` sets every role at once, `models` holds options per role (from
YAML, or `--model-option ROLE.OPTION=VALUE`). Options that make no sense for a role (a
scoring template on a chat role) are refused when the settings are validated.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from .registry import check_spec, provider_class
from .spec import ModelSpec, parse_option_assignments, parse_spec


CHAT_ONLY = frozenset({"structured"})
SCORING_ONLY = frozenset({"template", "mode"})


class RoleModels(BaseModel):
    """Settings mixin: the run's model roles, each a spec string field (`judge`, `scorer`, ...),
    plus `model` (every role at once; a role's own field wins) and `models` (options per
    role, from YAML or `--model-option ROLE.OPTION=VALUE`). After validation every role field
    holds its model string, and `spec_for(role)` gives the full `ModelSpec`.

    Subclasses list their roles in `chat_roles` / `scoring_roles` (a list-valued field such
    as `responders` names roles `responder_0`, `responder_1`, ...; `models.responders` applies
    to all of them)."""

    model: str | None = Field(None, description="the model of every role not set on its own")
    models: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-role model options")

    chat_roles: ClassVar[tuple[str, ...]] = ()
    scoring_roles: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _resolve_roles(self) -> "RoleModels":
        known = (*self.chat_roles, *self.scoring_roles)
        for role, opts in self.models.items():
            if role not in known and not (role.startswith("responder_") and "responders" in known):
                raise ValueError(f"models: unknown role '{role}' (roles here: {', '.join(known)})")
            if not isinstance(opts, dict):
                raise ValueError(f"models.{role}: give a mapping of options, e.g. {{spec: openai:MODEL, base_url: URL}}")
        for role in known:
            default = self.models.get(role, {}).get("spec") or self.model or "embedded"
            value = getattr(self, role)
            if isinstance(value, list):
                setattr(self, role, value or [default])
            elif value is None:
                setattr(self, role, default)
        for role in self.role_names():
            spec = self.spec_for(role)
            if provider_class(spec.provider) is not None:  # unknown names: `check_models` (at run time)
                spec = check_spec(spec, where=f"models.{role}")
            wrong = (SCORING_ONLY if _base(role) in self.chat_roles else CHAT_ONLY) & set(spec.options())
            if wrong:
                kind = "chat" if _base(role) in self.chat_roles else "scoring"
                raise ValueError(f"models.{role}: option(s) {', '.join(sorted(wrong))} do not apply to a {kind} role")
        if getattr(self, "batch", False) and not any("batch" in provider_options(self.spec_for(r))
                                                     for r in self.role_names()):
            raise ValueError("batch: sends server models' requests through the provider's batch API, but no role "
                             "here is a server (openai:) model")
        return self

    def check_models(self) -> None:
        """Every role names a known provider with options it takes (before anything loads)."""
        for role in self.role_names():
            check_spec(self.spec_for(role), where=role)

    def role_names(self) -> list[str]:
        """Every role, list-valued ones expanded (`responder_0`, ...)."""
        names = []
        for role in (*self.chat_roles, *self.scoring_roles):
            value = getattr(self, role)
            names += [f"{role[:-1]}_{i}" for i in range(len(value))] if isinstance(value, list) else [role]
        return names

    def spec_for(self, role: str, **defaults: Any) -> ModelSpec:
        """The full spec of `role`: its string, its `models` options, then `defaults` for the rest."""
        base = _base(role)
        value = getattr(self, base)
        if isinstance(value, list):
            value = value[int(role.rpartition("_")[2])]
        opts = {**self.models.get(base, {}), **(self.models.get(role, {}) if role != base else {})}
        opts.pop("spec", None)
        spec = parse_spec({"spec": value or self.model or "embedded", **opts}, where=f"models.{role}")
        # Run-wide defaults fill only options this provider takes (a base_url means nothing to hf:).
        allowed = provider_options(spec)
        return spec.with_defaults(**{k: v for k, v in {**self.role_defaults(), **defaults}.items() if k in allowed})

    def role_defaults(self) -> dict[str, Any]:
        """Run-wide defaults of spec options (e.g. the top-level base_url); subclasses extend it."""
        return {"base_url": getattr(self, "base_url", None)}


def provider_options(spec: ModelSpec) -> frozenset[str]:
    """The options `spec`'s provider takes (none when it names no known provider: loading says so)."""
    cls = provider_class(spec.provider)
    return frozenset(cls.options) if cls is not None else frozenset()


def _base(role: str) -> str:
    """`responder_3` -> `responders`; other roles are their own field."""
    return "responders" if role.startswith("responder_") else role


def apply_model_options(flags: dict[str, Any], assignments: list[str] | None, roles: tuple[str, ...]) -> None:
    """Fold `--model-option` values into `flags['models']` (OPTION=VALUE without a role: every role)."""
    parsed = parse_option_assignments(assignments)
    if not parsed:
        return
    models: dict[str, dict[str, Any]] = flags.setdefault("models", None) or {}
    for role, opts in parsed.items():
        for r in (roles if role == "*" else (role,)):
            models.setdefault(r, {}).update(opts)
    flags["models"] = models

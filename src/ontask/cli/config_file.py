"""`--config FILE.yaml`: settings from a file, overridden by flags given on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def merged(config_file: Path | None, section: str, flags: dict[str, Any]) -> dict[str, Any]:
    """File settings (top level, or under `section:`) updated with the non-None flags."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{config_file}: cannot read config: {err}") from err
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: expected a mapping of settings")
        data = dict(loaded.get(section, loaded)) if isinstance(loaded.get(section), dict) else dict(loaded)
        data = {k.replace("-", "_"): v for k, v in data.items()}
    for key, value in flags.items():
        if value is None:
            continue
        if key == "models" and isinstance(data.get("models"), dict):  # per-role options merge role by role
            value = {role: {**(data["models"].get(role) or {}), **(value.get(role) or {})}
                     for role in {**data["models"], **value}}
        data[key] = value
    return data

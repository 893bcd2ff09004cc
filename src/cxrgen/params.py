"""Reading params.yaml, the single place every stage takes its settings from."""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import BadInput


def load_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BadInput(path, "parameters file not found (run from the project root)") from None
    except yaml.YAMLError as exc:
        raise BadInput(path, f"not valid YAML ({exc})") from None
    if not isinstance(params, dict):
        raise BadInput(path, "must be a YAML mapping of sections")
    return params


def section(params: dict, name: str, path: str | Path = "params.yaml") -> dict:
    value = params.get(name)
    if not isinstance(value, dict):
        raise BadInput(path, f"missing or malformed section '{name}'")
    return value

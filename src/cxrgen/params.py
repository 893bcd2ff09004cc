"""Reading params.yaml, the single place every stage takes its settings from."""

from __future__ import annotations

from pathlib import Path

import yaml

from cxrgen.errors import BadInput


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


def check_keys(given, known, where: str, path: str | Path = "params.yaml") -> dict:
    """The mapping `given` (params.yaml at `where`, e.g. "download.local"), or {} when absent; a key
    the code does not know is an error naming the file and the key (a typo must not be ignored)."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise BadInput(path, f"{where} must be a mapping of settings, not {given!r}")
    unknown = set(given) - set(known)
    if unknown:
        raise BadInput(path, f"{where} has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return given


def with_defaults(params: dict, name: str, defaults: dict, path: str | Path = "params.yaml") -> dict:
    """Section `name` over its defaults; a key the code does not know is an error (a typo must not
    silently fall back to the default)."""
    given = check_keys(params.get(name), defaults, name, path)
    return {**defaults, **given}

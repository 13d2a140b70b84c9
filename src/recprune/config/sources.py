"""Where configuration values come from: files (YAML, TOML, JSON) and dotted CLI overrides.

``recprune select --config games.yaml --set influence.solver=cg --set budget=512`` reads the
file, applies each ``KEY.PATH=VALUE`` on top (VALUE parsed as YAML, so ``512`` is a number,
``[1, 2]`` a list, ``null`` None), then validates the result against the workflow's config
class (:func:`recprune.config.from_dict`), which names any unknown or invalid key.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from recprune.errors import ConfigError


def load_file(path: str | Path) -> dict[str, Any]:
    """The table of options in a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {p}: no such file")
    text = p.read_bytes()
    try:
        if p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text.decode("utf-8"))
        elif p.suffix == ".toml":
            data = tomllib.loads(text.decode("utf-8"))
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"--config {p}: use a .yaml, .toml or .json file")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {p}: not UTF-8 (byte {e.start})") from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--config {p}: cannot parse it ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {p}: expected a table of options at the top level")
    return data


def parse_value(text: str) -> Any:
    """A CLI value: JSON (``3``, ``1e-3``, ``true``, ``null``, ``[1, 2]``), else YAML flow
    values (``[a, b]``, ``{a: 1}``); anything else stays the string it is."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (list, dict)) else text


def parse_overrides(items: Iterable[str], flag: str = "--set") -> list[tuple[list[str], Any]]:
    out = []
    for item in items:
        key, eq, value = item.partition("=")
        path = [k.strip() for k in key.split(".")]
        if not eq or not all(path):
            raise ConfigError(f"{flag} expects KEY.PATH=VALUE, got {item!r}")
        out.append((path, parse_value(value)))
    return out


def apply_overrides(data: dict[str, Any], items: Iterable[str], flag: str = "--set"
                    ) -> dict[str, Any]:
    """``data`` with each ``KEY.PATH=VALUE`` of ``items`` set (nested tables created)."""
    for path, value in parse_overrides(items, flag):
        node = data
        for i, k in enumerate(path[:-1]):
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{flag} {'.'.join(path)}: {'.'.join(path[:i + 1])} is a "
                                  f"value ({nxt!r}), not a table of options")
            node = nxt
        node[path[-1]] = value
    return data


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of two option tables (``top`` wins)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out

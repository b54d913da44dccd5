"""Experiment configs: python files with `get_config() -> ml_collections.ConfigDict`, plus --config.KEY=VALUE
overrides. An unknown key or a value of the wrong type is an error naming it, before anything runs."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import ml_collections

from imtcxr_jax.models.config import ModelConfig

OVERRIDE_PREFIX = "--config."


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config: {path} does not exist, expected a python file defining get_config()")
    root = str(path.resolve().parent.parent)  # so that `from configs.base import ...` resolves
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(f"imtcxr_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config: {path} defines no get_config()")
    return module.get_config()


def _parse_value(key: str, text: str, current: Any) -> Any:
    if isinstance(current, ml_collections.ConfigDict):
        first = next(iter(current.keys()), "KEY")
        raise ValueError(
            f"--config.{key}: is a group of keys ({sorted(current.keys())}); set them one at a time, e.g. "
            f"--config.{key}.{first}=VALUE"
        )
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"--config.{key}: got {text!r}, expected true or false")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--config.{key}: got {text!r}, expected an integer") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--config.{key}: got {text!r}, expected a number") from None
    if isinstance(current, tuple | list):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"--config.{key}: got {text!r}, expected a tuple such as (2,4,1)") from None
        return tuple(value) if isinstance(value, tuple | list) else (value,)
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Apply ["--config.a.b=1", ...] in order. Unknown keys are rejected with their name."""
    for item in overrides:
        if not item.startswith(OVERRIDE_PREFIX) or "=" not in item:
            raise ValueError(f"override {item!r}: expected --config.KEY=VALUE")
        key, text = item[len(OVERRIDE_PREFIX) :].split("=", 1)
        node, parts = config, key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                where = ".".join(parts[:depth]) or "config"
                raise ValueError(f"--config.{key}: {where} has no key {part!r} (known: {known})")
            if depth < len(parts) - 1:
                node = node[part]
        node[parts[-1]] = _parse_value(key, text, node[parts[-1]])
    return config


def load_config(path: str | Path, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    config = apply_overrides(load_config_file(path), list(overrides))
    ModelConfig.from_dict(config.model.to_dict())  # validates the model section now, naming a bad field
    return config


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """The inverse of `config_to_json` (lists become tuples where the key holds a shape, e.g. mesh)."""
    values = json.loads(text)

    def tuples(node):
        if isinstance(node, dict):
            return {k: tuples(v) for k, v in node.items()}
        return tuple(node) if isinstance(node, list) else node

    return ml_collections.ConfigDict(tuples(values))

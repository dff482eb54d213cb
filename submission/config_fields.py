"""Dataclass fields set from TOML tables and command-line strings, checked against their hints.

The config (config.py) and the build pipeline (build/pipeline.py) load their TOML
through these; every name and value is checked, so a typo is an error, not a
silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def read_toml(toml_path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's tables, or a ConfigError that names the file and the problem."""
    path = Path(toml_path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def set_field(config: Any, dotted: str, raw: str) -> None:
    """Set one field from its dotted path and a string value, coerced to the field's type."""
    *parents, last = dotted.split(".")
    target: Any = config
    for part in parents:
        if not dataclasses.is_dataclass(target) or part not in _field_names(target):
            raise ConfigError(f"unknown config section {dotted!r}")
        target = getattr(target, part)
    if not dataclasses.is_dataclass(target) or last not in _field_names(target):
        raise ConfigError(f"unknown config field {dotted!r}")
    hint = typing.get_type_hints(type(target))[last]
    setattr(target, last, _coerce_text(raw, hint, dotted))


def _field_names(obj: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}


def apply_mapping(target: Any, data: dict[str, Any], prefix: str = "") -> None:
    """Set a dataclass tree's fields from nested TOML tables, checking every name and type."""
    hints = typing.get_type_hints(type(target))
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in _field_names(target):
            raise ConfigError(f"unknown config field {dotted!r}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted!r} is a section; give a table, not {value!r}")
            apply_mapping(current, value, dotted)
        else:
            setattr(target, key, _coerce_value(value, hints[key], dotted))


def _coerce_value(value: Any, hint: Any, where: str) -> Any:
    """Check a TOML value against a field's type hint (ints are accepted for floats)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where} must be one of {typing.get_args(hint)}, not {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, not {value!r}")
        (item_hint,) = typing.get_args(hint)
        return [_coerce_value(v, item_hint, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, not {value!r}")
        key_hint, item_hint = typing.get_args(hint)
        return {
            _coerce_value(k, key_hint, where): _coerce_value(v, item_hint, where)
            for k, v in value.items()
        }
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, not {value!r}")
        (item_hint, _) = typing.get_args(hint)
        return tuple(_coerce_value(v, item_hint, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce_value(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} fits none of {hint}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    if hint in (int, float, str) and (not isinstance(value, hint) or isinstance(value, bool)):
        raise ConfigError(f"{where} must be {hint.__name__}, not {value!r}")
    return value


def _coerce_text(raw: str, hint: Any, where: str) -> Any:
    """Parse a command-line string for a field: as TOML when it parses, else as a bare string."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if typing.get_origin(hint) is tuple and isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if hint is str and not isinstance(value, str):
        value = raw
    return _coerce_value(value, hint, where)

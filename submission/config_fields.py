"""Dataclass fields set from TOML tables and command-line strings, checked against their hints.

The config (config.py) and the build pipeline (build/pipeline.py) load their TOML
through these; every name and value is checked, so a typo is an error (with the
nearest known name), not a silently ignored setting.

Value rules: a field's allowed values are declared beside its default as
`Annotated[type, Rule, ...]` (`Range`, `NonEmpty`, `NoEmptyItems`, `Pattern`,
`Contains` below); `check_fields` walks a dataclass tree and reports every
field whose value breaks its rules, naming the field, the value and what is
allowed. Type hints without `include_extras` drop the rules, so setting and
coercing a field is unchanged by them.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol


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
            raise ConfigError(f"unknown config section {dotted!r}{_did_you_mean(dotted, config)}")
        target = getattr(target, part)
    if not dataclasses.is_dataclass(target) or last not in _field_names(target):
        raise ConfigError(f"unknown config field {dotted!r}{_did_you_mean(dotted, config)}")
    hint = typing.get_type_hints(type(target))[last]
    setattr(target, last, _coerce_text(raw, hint, dotted))


def _field_names(obj: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}


def _dotted_fields(obj: Any, prefix: str = "") -> Iterator[str]:
    """Every field's dotted path in a dataclass tree, sections included."""
    for item in dataclasses.fields(obj):
        dotted = f"{prefix}.{item.name}" if prefix else item.name
        yield dotted
        value = getattr(obj, item.name)
        if dataclasses.is_dataclass(value):
            yield from _dotted_fields(value, dotted)


def _did_you_mean(dotted: str, root: Any, prefix: str = "") -> str:
    """'; did you mean X?' with the nearest known field of the tree, or nothing."""
    known = [f"{prefix}.{p}" if prefix else p for p in _dotted_fields(root)]
    close = difflib.get_close_matches(dotted, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def apply_mapping(target: Any, data: dict[str, Any], prefix: str = "") -> None:
    """Set a dataclass tree's fields from nested TOML tables, checking every name and type."""
    hints = typing.get_type_hints(type(target))
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in _field_names(target):
            hint = _did_you_mean(dotted, target, prefix)
            raise ConfigError(f"unknown config field {dotted!r}{hint}")
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


# --- value rules, declared beside each default as Annotated[type, Rule, ...] ------------------


class Rule(Protocol):
    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` (what is allowed), or None when it fits."""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


@dataclass(frozen=True)
class Range:
    """A number's allowed interval: ge/gt the lower bound, le/lt the upper; None = open."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def problem(self, value: Any) -> str | None:
        fits = (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )
        return None if fits else f"must be {self}"

    def __str__(self) -> str:
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            left, right = "[" if self.ge is not None else "(", "]" if self.le is not None else ")"
            return f"in {left}{_number(low)}, {_number(high)}{right}"
        if low is not None:
            return f"{'>=' if self.ge is not None else '>'} {_number(low)}"
        if high is not None:
            return f"{'<=' if self.le is not None else '<'} {_number(high)}"
        return "any number"


@dataclass(frozen=True)
class NonEmpty:
    """Text (or a list) that must not be empty."""

    def problem(self, value: Any) -> str | None:
        return None if len(value) else "must not be empty"


@dataclass(frozen=True)
class NoEmptyItems:
    """A list whose items must each be non-empty text."""

    def problem(self, value: Any) -> str | None:
        return None if all(value) else "must not hold an empty item"


@dataclass(frozen=True)
class Pattern:
    """Text that must match a regular expression; `looks_like` says it in words."""

    regex: str
    looks_like: str

    def problem(self, value: Any) -> str | None:
        items = value if isinstance(value, tuple | list) else (value,)
        if all(re.fullmatch(self.regex, str(item)) for item in items):
            return None
        return f"must look like {self.looks_like}"


@dataclass(frozen=True)
class Contains:
    """Text that must contain a marker (e.g. a template's `{problem}`)."""

    marker: str

    def problem(self, value: Any) -> str | None:
        return None if self.marker in value else f"must contain {self.marker!r}"


def field_rules(cls: type, name: str) -> tuple[Rule, ...]:
    """The rules declared on a dataclass field (Annotated metadata)."""
    hint = typing.get_type_hints(cls, include_extras=True)[name]
    if typing.get_origin(hint) is not typing.Annotated:
        return ()
    return tuple(m for m in hint.__metadata__ if callable(getattr(m, "problem", None)))


def check_fields(obj: Any, prefix: str = "") -> list[str]:
    """Every field of a dataclass tree whose value breaks its rules: 'field = value: allowed'."""
    problems: list[str] = []
    for item in dataclasses.fields(obj):
        value = getattr(obj, item.name)
        dotted = f"{prefix}.{item.name}" if prefix else item.name
        if dataclasses.is_dataclass(value):
            problems += check_fields(value, dotted)
            continue
        for rule in field_rules(type(obj), item.name):
            if (problem := rule.problem(value)) is not None:
                problems.append(f"{dotted} = {value!r}: {problem}")
    return problems

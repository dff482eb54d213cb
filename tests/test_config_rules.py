"""Every config field's allowed values, declared beside its default and checked at load time.

Issue 21 item 6: `--set solver.attempts=0` (or -3) ran with no attempts and
exited 0; a mistyped key got no "did you mean". The rules live in
submission/config.py (Annotated[..., Range(...)] and friends); config_fields.py
checks them for defaults, profiles, TOML files and `--set` alike.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from submission.__main__ import main
from submission.config import (
    PROFILES,
    Config,
    ConfigError,
    SolverConfig,
    check_config,
    load_config,
)
from submission.config_fields import Range, check_fields, field_rules, set_field


def number_fields(obj: Any = None, prefix: str = "") -> Iterator[tuple[str, type, str, type]]:
    """(dotted name, owning dataclass, name, int or float) for every number field of the config."""
    obj = Config() if obj is None else obj
    hints = typing.get_type_hints(type(obj))
    for item in dataclasses.fields(obj):
        dotted = f"{prefix}.{item.name}" if prefix else item.name
        value = getattr(obj, item.name)
        if dataclasses.is_dataclass(value):
            yield from number_fields(value, dotted)
        elif hints[item.name] in (int, float):
            yield dotted, type(obj), item.name, hints[item.name]


def the_range(owner: type, name: str) -> Range:
    (found,) = [rule for rule in field_rules(owner, name) if isinstance(rule, Range)]
    return found


def test_every_number_field_declares_its_range() -> None:
    missing = [
        dotted
        for dotted, owner, name, _ in number_fields()
        if not any(isinstance(r, Range) for r in field_rules(owner, name))
    ]
    assert not missing, f"give these fields a Range beside their default: {missing}"
    assert len(list(number_fields())) > 60


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_defaults_and_profiles_fit_their_rules(profile: str) -> None:
    assert check_fields(load_config(profile)) == []


def test_a_default_out_of_range_is_caught() -> None:
    with pytest.raises(ConfigError, match=r"solver\.attempts = 0: must be >= 1"):
        check_config(Config(solver=SolverConfig(attempts=0)))


@pytest.mark.parametrize(("dotted", "owner", "name", "kind"), list(number_fields()))
def test_each_bound_is_enforced_and_the_bound_itself_allowed(
    dotted: str, owner: type, name: str, kind: type
) -> None:
    rule = the_range(owner, name)
    outside: list[float] = []
    if rule.ge is not None:
        outside.append(rule.ge - 1)
        config = load_config()
        set_field(config, dotted, repr(kind(rule.ge)))
        assert not [p for p in check_fields(config) if p.startswith(dotted + " ")]
    if rule.gt is not None:
        outside.append(rule.gt)
    if rule.le is not None:
        outside.append(rule.le + 1)
    if rule.lt is not None:
        outside.append(rule.lt)
    for value in outside:
        text = repr(kind(value))
        with pytest.raises(ConfigError, match=rf"{dotted} = {text}: must be "):
            load_config(overrides=[f"{dotted}={text}"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("solver.attempts=0", "solver.attempts = 0: must be >= 1"),
        ("solver.attempts=-3", "solver.attempts = -3: must be >= 1"),
        ("generation.top_p=0", r"generation.top_p = 0.0: must be in \(0, 1\]"),
        ("engine.sim.error_rate=2", r"engine.sim.error_rate = 2.0: must be in \[0, 1\]"),
        ("prompt.user_message=Solve it", "prompt.user_message = 'Solve it': must contain"),
        ("generation.stop=['']", "generation.stop = \\(''.*must not hold an empty item"),
        ("engine.hf.device=gpu", "engine.hf.device = 'gpu': must look like auto, cpu, cuda"),
        ("engine.hf.dtype=fp8", "must be one of"),
        ("engine.openai.base_urls=[]", r"engine.openai.base_urls = \(\): must not be empty"),
        ("engine.openai.base_urls=localhost:8000", "must look like http://HOST:PORT/v1"),
        ("engine.trtllm.python_version=3", "engine.trtllm.python_version = '3': must look like"),
        ("output.out_dir=''", "output.out_dir = '': must not be empty"),
        ("profile.answer_min=1000", "profile.answer_min <= profile.answer_max does not hold"),
        ("budget.min_problem_s=4000", "budget.min_problem_s <= budget.max_problem_s"),
    ],
)
def test_a_value_outside_its_rule_is_a_clear_error(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("aimo2", overrides=[override])


def test_a_toml_file_and_a_profile_are_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("[solver]\nattempts = -3\n[tir]\nmax_code_calls = -1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(toml_path=toml)
    # every broken field at once, not only the first
    assert "solver.attempts = -3: must be >= 1" in str(caught.value)
    assert "tir.max_code_calls = -1: must be >= 0" in str(caught.value)
    monkeypatch.setitem(PROFILES, "aimo2", {**PROFILES["aimo2"], "problems": 0})
    with pytest.raises(ConfigError, match=r"profile\.problems = 0: must be >= 1"):
        load_config("aimo2")


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("solver.atempts=3", "solver.attempts"),
        ("solvr.attempts=3", "solver.attempts"),
        ("engine.sim.speeed=3", "engine.sim.speed"),
        ("generation.temprature=0.7", "generation.temperature"),
    ],
)
def test_a_mistyped_key_gets_did_you_mean(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'"):
        load_config(overrides=[override])


def test_a_mistyped_toml_table_gets_did_you_mean(tmp_path: Path) -> None:
    toml = tmp_path / "typo.toml"
    toml.write_text("[solvr]\nattempts = 3\n")
    with pytest.raises(ConfigError, match="did you mean 'solver'"):
        load_config(toml_path=toml)
    toml.write_text("[engine.sim]\nsped = 3\n")
    with pytest.raises(ConfigError, match=r"did you mean 'engine\.sim\.speed'"):
        load_config(toml_path=toml)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_replay_refuses_no_attempts(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: it ran with no attempts, answered every problem with the fallback, exit 0."""
    code = main(["replay", "--limit", "2", "--set", f"solver.attempts={value}"])
    assert code == 2
    assert f"solver.attempts = {value}: must be >= 1" in capsys.readouterr().err

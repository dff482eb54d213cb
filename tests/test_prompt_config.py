"""Prompt rendering (golden strings for both code-tag styles) and the typed config."""

from __future__ import annotations

from pathlib import Path

import pytest

from submission.config import ConfigError, load_config
from submission.families.openmath import OPENMATH_TAGS
from submission.families.text import PromptTemplate
from submission.families.tora import TORA_TAGS

PROBLEM = "Find the sum of all integer bases $b>9$ for which $17_{b}$ is a divisor of $97_{b}$."

GOLDEN_PROMPT = (
    "<|im_start|>system\n<|im_end|>\n"
    "<|im_start|>user\n"
    "Solve the following math problem. Make sure to put the answer (and only answer) "
    "inside \\boxed{}.\n\n"
    "Find the sum of all integer bases $b>9$ for which $17_{b}$ is a divisor of $97_{b}$."
    "<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_qwen_instruct_generic_math_golden() -> None:
    template = PromptTemplate.from_config(load_config().prompt)
    assert template.render(PROBLEM) == GOLDEN_PROMPT


def test_raw_template_is_the_user_message_alone() -> None:
    template = PromptTemplate.from_config(load_config(overrides=["prompt.template=raw"]).prompt)
    assert template.render("2+2?") == (
        "Solve the following math problem. Make sure to put the answer (and only answer) "
        "inside \\boxed{}.\n\n2+2?"
    )


def test_problem_and_generation_are_found_again_in_a_prompt() -> None:
    template = PromptTemplate.from_config(load_config().prompt)
    prompt = template.render(PROBLEM) + "Let me think. <tool_call>\nprint(1)"
    assert template.problem_of(prompt) == PROBLEM
    assert template.generation_of(prompt) == "Let me think. <tool_call>\nprint(1)"
    assert template.problem_of("something else") is None


def test_openmath_output_block_golden() -> None:
    # The model stopped at </tool_call> (left out of its text); we append it and the output.
    assert OPENMATH_TAGS.format_output("70\n") == "</tool_call>\n```output\n70\n```\n"


def test_tora_output_block_golden() -> None:
    # ToRA closes ```python itself and opens ```output; the engine stops at ```output.
    assert TORA_TAGS.format_output("18\n") == "```output\n18\n```\n"


def test_profiles() -> None:
    aimo3, aimo2 = load_config("aimo3"), load_config("aimo2")
    assert (aimo3.profile.answer_max, aimo2.profile.answer_max) == (99_999, 999)
    assert aimo3.profile.gateway_class == "AIMO3InferenceServer"
    assert aimo2.profile.gateway_module == "kaggle_evaluation.aimo_2_inference_server"
    assert aimo2.profile.per_call_limit_s == 1800
    assert aimo3.profile.time_limit_s == 5 * 3600


def test_toml_then_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('[solver]\nattempts = 16\n[generation]\ntemperature = 1\nstop = ["x"]\n')
    config = load_config("aimo2", toml, ["solver.attempts=4", "engine.kind=sim"])
    assert config.solver.attempts == 4
    assert config.generation.temperature == 1.0
    assert config.generation.stop == ("x",)
    assert config.engine.kind == "sim"
    assert config.profile.answer_max == 999


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("solver.attemptz=3", "unknown config field"),
        ("solvr.attempts=3", "unknown config section"),
        ("solver.attempts=three", "must be int"),
        ("engine.kind=gpt", "must be one of"),
        ("tir.stop_at_boxed=maybe", "must be true or false"),
        ("solver.attempts", "section.field=value"),
    ],
)
def test_bad_overrides_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_the_old_code_tags_key_names_its_new_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'prompt\.code_tags' was renamed to 'prompt\.family'"):
        load_config(overrides=["prompt.code_tags=tora"])
    old = tmp_path / "old.toml"
    old.write_text('[prompt]\ncode_tags = "tora"\n')
    with pytest.raises(ConfigError, match=r"renamed to 'prompt\.family'"):
        load_config(toml_path=old)
    assert load_config(overrides=["prompt.family=tora"]).prompt.family == "tora"


def test_bad_toml_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[solver\nattempts = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(toml_path=bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(toml_path=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config("aimo4")

"""Answer extraction and normalisation on real-world text, and the range rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from submission.answer import (
    AnswerRange,
    answer_text,
    extract_answer,
    last_boxed,
    normalize_integer,
)
from submission.config import PACKAGE_DATA

# (text as models write it, expected integer or None). The first block is taken
# verbatim from the ToRA GSM8K transcripts; the rest are forms the issue names.
CASES = [
    ("Janet makes $\\boxed{18}$ dollars every day at the farmers' market.", 18),
    ("It takes $\\boxed{25.0}$ minutes.", 25),
    ("The percentage is $\\boxed{20\\%}$.", 20),
    ("She gets $\\boxed{4.0}$ dollars in change.", 4),
    ("The temperature is $\\boxed{-10.0}$ degrees Fahrenheit.", -10),
    ("He has $\\boxed{4.5}$ dollars left.", None),
    ("He uses $\\boxed{5.555555555555555}$ Mb per hour.", None),
    ("She ate $\\boxed{33.33\\%}$ of the watermelon.", None),
    ("The price fell $\\boxed{40.0\\%}$.", 40),
    ("It is $\\boxed{120\\%}$ of the shark's body length.", 120),
    ("The answer is $\\boxed{0\\%}$.", 0),
    ("So the total is $\\boxed{276000.0}$ dollars for everything.", 276000),
    ("$\\boxed{0.56}$ (rounded to two decimal places)", None),
    ("Ten men can stay upright on the wave.", None),
    ("Johnny picks up the boxed set with 500 pieces on the floor", None),
    ("$\\boxed{1,000}$", 1000),
    ("$\\boxed{114,200}$", 114200),
    ("$\\boxed{1{,}000}$", 1000),
    ("$\\boxed{1\\,000}$", 1000),
    ("$\\boxed{ 42 }$", 42),
    ("$\\boxed{\\text{18 dollars}}$", 18),
    ("$\\boxed{18 \\text{ dollars}}$", 18),
    ("$\\boxed{\\text{(C)}}$", None),
    ("$\\boxed{90^\\circ}$", 90),
    ("$\\boxed{90^{\\circ}}$", 90),
    ("$\\boxed{18.0}$", 18),
    ("$\\boxed{\\frac{8}{2}}$", 4),
    ("$\\boxed{\\dfrac{8}{2}}$", 4),
    ("$\\boxed{\\tfrac{9}{3}}$", 3),
    ("$\\boxed{\\frac{8}{3}}$", None),
    ("$\\boxed{-\\frac{12}{4}}$", -3),
    ("$\\boxed{\\frac{1}{0}}$", None),
    ("$\\boxed{\u22125}$", -5),
    ("so the answer is \\boxed 5.", 5),
    ("\\fbox{12}", 12),
    ("First \\boxed{3}, then on reflection \\boxed{7}.", 7),
    ("\\boxed{\\{3\\}}", None),
    ("\\boxed{{336}}", 336),
    ("\\boxed{x = 12}", 12),
    ("\\boxed{n=2025}", 2025),
    ("\\boxed{12", None),  # box not closed (generation cut off)
    ("\\boxed{}", None),
    ("The answer is 7.", 7),
    ("Therefore, the final answer is: $1,250$", 1250),
    ("no answer here", None),
    ("\\boxed{3/1}", 3),
    ("\\boxed{\\$15}", 15),
    ("\\boxed{\\left(7\\right)}", None),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_extract_answer(text: str, expected: int | None) -> None:
    assert extract_answer(text) == expected


def test_the_answer_is_read_after_the_reasoning() -> None:
    # As `++parse_reasoning=True`: the text after the last </think>, stripped; else all of it.
    thought = "Maybe \\boxed{12}? Wait, I miscounted.\n</think>\n\nThe total is \\boxed{13}.\n"
    assert answer_text(thought) == "The total is \\boxed{13}."
    assert extract_answer(thought) == 13
    assert extract_answer("Maybe \\boxed{12}.\n</think>\n\nI could not decide.") is None
    assert answer_text("no reasoning tags \\boxed{5}") == "no reasoning tags \\boxed{5}"


def test_the_answer_phrase_counts_only_for_a_finished_generation() -> None:
    cut = "...whether the answer is 12 or 13, because"
    assert extract_answer(cut, finished=True) == 12
    assert extract_answer(cut, finished=False) is None
    # A box counts either way: it is complete.
    assert extract_answer("so \\boxed{7} and then", finished=False) == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("answer is 17, i.e. \\boxed{17", 17),
        ("the answer is 1,250, i.e. done", 1250),
        ("the answer is 12,34", 12),
        ("The answer is: $-4$.", -4),
    ],
)
def test_the_answer_phrase_reads_the_number_not_the_comma(text: str, expected: int) -> None:
    assert extract_answer(text) == expected


def test_last_boxed_matches_nested_braces() -> None:
    assert last_boxed("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{a{b{c}}d}") == "a{b{c}}d"
    assert last_boxed("nothing") is None


def _integer_or_none(pred: str) -> int | None:
    try:
        value = float(pred)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def test_agrees_with_recorded_predictions_on_every_embedded_transcript() -> None:
    """ToRA's own extraction of each recorded generation, where it produced a number."""
    checked = 0
    for path in sorted(PACKAGE_DATA.glob("*_gsm8k_first250.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            text = record["code"][0]
            if "\\boxed" not in text:
                continue
            pred = record["pred"][0]
            try:
                float(pred)
            except ValueError:
                continue
            assert extract_answer(text) == _integer_or_none(pred), (record["idx"], text[-80:])
            checked += 1
    assert checked > 450


def test_agrees_with_recorded_predictions_on_all_shared_transcripts(shared_data: Path) -> None:
    checked = 0
    for path in sorted((shared_data / "transcripts").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            text, pred = record["code"][0], record["pred"][0]
            if "\\boxed" not in text or (_integer_or_none(pred) is None and not _is_number(pred)):
                continue
            assert extract_answer(text) == _integer_or_none(pred), (record["idx"], text[-80:])
            checked += 1
    assert checked > 2400


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_normalize_rejects_non_numbers() -> None:
    assert normalize_integer("abc") is None
    assert normalize_integer("") is None
    assert normalize_integer("3e5") is None


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        (AnswerRange(0, 99_999), 99_999, 99_999),
        (AnswerRange(0, 99_999), 100_000, None),
        (AnswerRange(0, 99_999), -1, None),
        (AnswerRange(0, 999), 1234, None),
        (AnswerRange(0, 999, reduce_modulo=True), 1234, 234),
        (AnswerRange(0, 999, reduce_modulo=True), -1, 999),
        (AnswerRange(0, 999, reduce_modulo=True), None, None),
    ],
)
def test_answer_range(rule: AnswerRange, value: int | None, expected: int | None) -> None:
    assert rule.apply(value) == expected

"""The openmath output block, byte for byte against the pinned NeMo-Skills fork.

tests/golden/openmath_output.json holds, per case, the cells, the block the fork's
own code produced for them (its "source" says how) and what our sandbox returned
for the same cells. Both our formatter on that recorded result and the live
sandbox + formatter must give the fork's block.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from submission.config import load_config
from submission.families.base import OutputLimits, ToolResult
from submission.families.openmath import OPENMATH_OUTPUT, OpenmathFamily
from submission.families.text import PromptTemplate
from submission.families.tora import TORA_OUTPUT
from submission.sandbox import Sandbox

GOLDEN = json.loads((Path(__file__).parent / "golden" / "openmath_output.json").read_text())
CASES = GOLDEN["cases"]
LIMIT, MARKER = GOLDEN["max_output_chars"], GOLDEN["truncation_marker"]
OPENMATH = OpenmathFamily(
    PromptTemplate.from_config(load_config().prompt), OutputLimits(LIMIT, MARKER), False
)


def shown(stdout: str, stderr: str, status: str) -> str:
    """What the model sees after its </tool_call>: the block NeMo-Skills appends, as the
    family's transcript appends it."""
    transcript = OPENMATH.new_transcript("PROMPT")
    inside = transcript.add_tool_result(ToolResult(stdout, stderr, status))
    block = transcript.text
    assert block == "</tool_call>\n```output\n" + inside + "```\n"  # the stop string first
    return block.removeprefix("</tool_call>\n")


def test_the_golden_set_covers_every_case_the_issue_lists() -> None:
    names = {case["name"] for case in CASES}
    kinds = ("ok_", "error_", "timeout", "truncation_", "warning_", "bare_expression", "empty_")
    assert len(CASES) >= 20
    assert all(any(name.startswith(kind) for name in names) for kind in kinds)
    assert {"stdout_and_stderr", "strip_surrounding_whitespace", "truncation_then_error"} <= names


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_formatter_matches_the_fork_byte_for_byte(case: dict) -> None:
    result = case["sandbox_result"]
    assert shown(result["stdout"], result["stderr"], result["status"]) == case["nemo_block"]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    # The output capture is not cut in the sandbox (the formatter cuts).
    config = load_config(overrides=["tir.max_output_chars=20000", "sandbox.spare_sessions=1"])
    with Sandbox.from_config(config, OPENMATH.session_prelude) as box:
        yield box


@pytest.mark.parametrize(
    "case", [c for c in CASES if c["portable"]], ids=[c["name"] for c in CASES if c["portable"]]
)
def test_live_sandbox_and_formatter_match_the_fork(sandbox: Sandbox, case: dict) -> None:
    session = f"golden-{case['name']}"
    sandbox.run(OPENMATH_OUTPUT.session_prelude, session=session, timeout=10.0)
    cells = case["cells"]
    for i, code in enumerate(cells):
        timeout = case["timeout_s"] if i == len(cells) - 1 else 10.0
        result = sandbox.run(code, session=session, timeout=timeout)
    assert shown(result.stdout, result.stderr, result.status) == case["nemo_block"]


def test_marker_is_followed_by_a_newline_and_the_cut_counts_after_strip() -> None:
    block = shown("  " + "w" * 999 + "   \n", "", "ok")
    assert block == "```output\n" + "w" * 999 + "\n```\n"
    block = shown("v" * 1001, "", "ok")
    assert block.endswith("v<output cut>\n```\n")


def test_prints_and_traceback_are_cut_as_one_stream() -> None:
    traceback = (
        "Traceback (most recent call last):\n  Cell In[1], line 2\n    1 / 0\nZeroDivisionError\n"
    )
    block = shown("p" * 990 + "\n", traceback, "error")
    # 990 p's, the newline, then 9 characters of the traceback: 1000 in all.
    assert block == "```output\n" + "p" * 990 + "\nTraceback<output cut>\n```\n"


def test_what_the_code_wrote_to_stderr_stays_apart_from_the_traceback() -> None:
    stderr = "note\nTraceback (most recent call last):\n  Cell In[1], line 3\n    x\nNameError: x\n"
    block = shown("out\n", stderr, "error")
    # NeMo-Skills: stdout = prints + traceback, then stderr = what the code wrote there.
    traceback = "Traceback (most recent call last):\n    x\nNameError: x\n"
    assert block == "```output\nout\n" + traceback + "note\n```\n"


@pytest.mark.parametrize("status", ["timeout", "killed", "crashed"])
def test_a_dead_cell_shows_only_timed_out(status: str) -> None:
    assert shown("partial\n", "TimeoutError: a note from the sandbox\n", status) == (
        "```output\nTimed out\n```\n"
    )


def test_tora_shows_the_output_as_printed() -> None:
    tora = TORA_OUTPUT
    assert tora.render(" 18\n\n", "", "ok", LIMIT, MARKER) == " 18\n\n"
    assert tora.render("x" * 1005, "", "ok", LIMIT, MARKER) == "x" * 1000 + MARKER
    assert tora.render("", "", "timeout", LIMIT, MARKER) == (
        "timeout_decorator.timeout_decorator.TimeoutError: 'Timed Out'\n"
    )

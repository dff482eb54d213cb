"""One attempt's semantics: the recipe's by default (generate to the end, the last box after
the reasoning), the opt-in early cut, and the edge cases of issue 10.

The model text is a real ToRA GSM8K generation (submission/data) moved to OpenMath's
tags; the issue's edge cases are spliced into it where a case needs them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace

import pytest

from submission.answer import AnswerRange
from submission.config import PACKAGE_DATA, SandboxConfig, TirConfig, load_config
from submission.engines.base import Chunk, SamplingParams
from submission.families.openmath import OPENMATH_TAGS, OpenmathFamily
from submission.records import AttemptRecord
from submission.sandbox import Sandbox
from submission.tir import TirLoop

STOPS = ("<|im_end|>",)


def openmath_loop(engine: ScriptedEngine, sandbox: Sandbox, tir: TirConfig) -> TirLoop:
    config = load_config()
    config.tir = tir
    family = OpenmathFamily.from_config(config)
    return TirLoop(engine, sandbox, family, tir, AnswerRange(0, 99_999))


def real_generation() -> tuple[str, str]:
    """(text up to the code end, the text after the output block) of a recording.

    "Janet makes $\\boxed{18}$ dollars every day at the farmers' market." is its closing.
    """
    path = PACKAGE_DATA / "tora70b_gsm8k_first250.jsonl"
    text = json.loads(path.read_text().splitlines()[0])["code"][0]
    before, _, after = text.partition("```\n```output\n")
    _, _, closing = after.partition("```\n")
    prose, _, code = before.partition("```python\n")
    return prose + "<tool_call>\n" + code, closing


@dataclass
class ScriptedEngine:
    """Serves the next scripted round per stream call, a few words per chunk."""

    rounds: list[tuple[str, str]]  # (text, how it ends: "code" | "stop" | "length")
    name: str = "scripted"
    greedy: bool = False
    token_prompts: bool = False
    prompts: list[str] = field(default_factory=list)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        self.prompts.append(prompt)
        text, end = self.rounds[len(self.prompts) - 1]
        words = text.split(" ")
        pieces = [w + " " for w in words[:-1]] + [words[-1]]
        for piece in pieces[:-1]:
            yield Chunk(piece, 1)
        if end == "code":
            yield Chunk(pieces[-1], 1, "stop", stop=OPENMATH_TAGS.stop)
        else:
            yield Chunk(pieces[-1], 1, "stop" if end == "stop" else "length")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(spare_sessions=1)) as box:
        yield box


async def attempt(
    sandbox: Sandbox, rounds: list[tuple[str, str]], **tir: object
) -> tuple[AttemptRecord, ScriptedEngine]:
    engine = ScriptedEngine(rounds)
    loop = openmath_loop(engine, sandbox, replace(TirConfig(), **tir))
    record = AttemptRecord(problem_id="p", attempt_num=0)
    await loop.run_attempt(record, "PROMPT", SamplingParams(max_tokens=4000, stop=STOPS), "tir-a")
    sandbox.close_session("tir-a")
    return record, engine


async def test_a_real_generation_runs_its_code_and_feeds_back_the_nemo_block(
    sandbox: Sandbox,
) -> None:
    head, closing = real_generation()
    record, engine = await attempt(sandbox, [(head, "code"), (closing, "stop")])
    assert (record.answer, record.code_calls, record.errors, record.finish_reason) == (
        18,
        1,
        0,
        "stop",
    )
    assert engine.prompts[1] == "PROMPT" + head + "</tool_call>\n```output\n18\n```\n"


async def test_the_last_box_wins_by_default(sandbox: Sandbox) -> None:
    head, _ = real_generation()
    correction = "So \\boxed{12}. Wait, I miscounted: the eggs left are 13, so \\boxed{13}."
    record, _ = await attempt(sandbox, [(head, "code"), (correction, "stop")])
    assert (record.answer, record.finish_reason) == (13, "stop")


async def test_the_opt_in_cut_ignores_boxes_in_code_and_in_the_reasoning(sandbox: Sandbox) -> None:
    _, closing = real_generation()
    reasoning = "She sells 16 - 3 - 4 eggs, so maybe \\boxed{17}.\n</think>\n\n"
    fstring_code = "Checking with code:\n<tool_call>\nx = 18\nprint(f'\\\\boxed{{{x}}}')\n"
    record, engine = await attempt(
        sandbox,
        [(reasoning + fstring_code, "code"), (closing + " Extra words.", "stop")],
        stop_at_boxed=True,
    )
    # 17 is before </think>, the f-string's box is inside code: the code ran.
    assert record.code_calls == 1
    assert engine.prompts[1].endswith("</tool_call>\n```output\n\\boxed{18}\n```\n")
    # The box after </think> and outside code ends the attempt there.
    assert (record.answer, record.finish_reason) == (18, "boxed")
    assert "Extra words" not in record.text


async def test_a_code_end_with_no_code_open_ends_the_generation(sandbox: Sandbox) -> None:
    _, closing = real_generation()
    record, engine = await attempt(sandbox, [(closing + "\n", "code"), ("never served", "stop")])
    assert (record.code_calls, record.finish_reason, record.answer) == (0, "stop", 18)
    assert len(engine.prompts) == 1


async def test_the_code_block_past_the_limit_is_not_run(sandbox: Sandbox) -> None:
    head, _ = real_generation()
    record, engine = await attempt(
        sandbox, [(head, "code"), (head, "code"), ("never served", "stop")], max_code_calls=1
    )
    assert (record.code_calls, record.finish_reason) == (1, "max_code_calls")
    assert len(engine.prompts) == 2
    assert record.text.endswith(head)  # no output block after the second one


@pytest.mark.parametrize(("end", "answer"), [("stop", 17), ("length", None)])
async def test_the_answer_phrase_votes_only_when_the_attempt_finished(
    sandbox: Sandbox, end: str, answer: int | None
) -> None:
    _, closing = real_generation()
    text = closing.replace("$\\boxed{18}$", "18") + " Checking: the answer is 17, i.e. \\boxed{17"
    record, _ = await attempt(sandbox, [(text, end)])
    assert (record.finish_reason, record.answer) == (end, answer)


async def test_no_code_runs_when_the_round_used_the_last_token(sandbox: Sandbox) -> None:
    head, _ = real_generation()
    engine = ScriptedEngine([(head, "code"), ("never served", "stop")])
    loop = openmath_loop(engine, sandbox, TirConfig())
    record = AttemptRecord(problem_id="p", attempt_num=0)
    budget = len(head.split(" "))  # the scripted engine counts a token per word
    await loop.run_attempt(record, "PROMPT", SamplingParams(max_tokens=budget), "tir-b")
    assert (record.tokens, record.code_calls, record.finish_reason) == (budget, 0, "length")


async def test_blank_lines_after_the_code_tag_do_not_count_as_lines(sandbox: Sandbox) -> None:
    _, closing = real_generation()
    # The fork's IPython drops leading blank lines before it runs a cell: it reports
    # "... after 'if' statement on line 1" for this block (run in /tmp, fork 27d7b1c3).
    code_round = "Let me check.\n<tool_call>\n\nif True:\nprint(2)\n"
    _, engine = await attempt(sandbox, [(code_round, "code"), (closing, "stop")])
    assert "'if' statement on line 1\n```\n" in engine.prompts[1]

"""The model-family seam: the registry builds each family from the config, the text families
keep today's behaviour through their transcript, and a family the engine can't serve is
refused with its reason."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from submission.answer import AnswerRange
from submission.config import PACKAGE_DATA, load_config
from submission.engines.base import Chunk, EngineError, SamplingParams
from submission.families.base import ToolCall, ToolResult
from submission.families.registry import FAMILIES, create_family
from submission.families.text import TextFamily
from submission.policy.defaults import default_policy
from submission.records import AttemptRecord
from submission.solver import Solver
from submission.tir import TirLoop


def tora_generation() -> str:
    path = PACKAGE_DATA / "tora70b_gsm8k_first250.jsonl"
    return json.loads(path.read_text().splitlines()[0])["code"][0]


@pytest.mark.parametrize("name", ["openmath", "tora"])
def test_the_registry_builds_each_text_family_from_the_config(name: str) -> None:
    family = create_family(load_config(overrides=[f"prompt.family={name}"]))
    assert isinstance(family, TextFamily)
    assert (family.name, family.token_prompts, family.stop) == (name, False, (family.tags.stop,))
    assert family.tool_call_stop == family.tags.stop
    assert family.session_prelude == family.tags.output.session_prelude
    assert FAMILIES[name].startswith(f"submission.families.{name}:")


def test_a_tora_transcript_parses_a_recorded_generation_round_by_round() -> None:
    text = tora_generation()  # ... ```python\n<code>```\n```output\n18\n```\n<closing>
    head, _, rest = text.partition("```output\n")
    recorded_output, _, closing = rest.partition("```\n")
    family = create_family(load_config(overrides=["prompt.family=tora"]))
    transcript = family.new_transcript("PROMPT ")
    for start in range(0, len(head), 7):  # fed in pieces, as an engine streams
        assert transcript.feed(Chunk(head[start : start + 7], 1)) is False
    call = transcript.end_round(Chunk("", 0, "stop", stop="```output"))
    assert isinstance(call, ToolCall)
    assert call.code is not None and "print(" in call.code and "```" not in call.code
    shown = transcript.add_tool_result(ToolResult(recorded_output, "", "ok"))
    assert shown == recorded_output
    assert transcript.next_prompt() == "PROMPT " + head + "```output\n" + shown + "```\n"
    transcript.feed(Chunk(closing, 3, "stop"))
    assert transcript.end_round(Chunk("", 0, "stop")) is None  # not a tool-call stop
    assert transcript.text == text
    assert transcript.answer(finished=True) == 18


def test_a_text_family_refuses_token_ids() -> None:
    family = create_family(load_config())
    with pytest.raises(TypeError, match="continues text"):
        family.new_transcript([1, 2, 3])


class _IdsFamily(TextFamily):
    """A text family that claims to render token ids (what harmony does)."""

    name = "ids"
    tags = create_family(load_config()).tags
    token_prompts = True


class _TextOnlyEngine:
    name = "text-only"
    greedy = False
    token_prompts = False

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        raise AssertionError("a mismatched engine is never asked")
        yield  # pragma: no cover


async def test_a_token_id_family_on_a_text_engine_fails_with_the_reason() -> None:
    family = _IdsFamily.from_config(load_config())
    loop = TirLoop(_TextOnlyEngine(), None, family, load_config().tir, AnswerRange(0, 9))
    record = AttemptRecord(problem_id="p", attempt_num=0)
    await loop.run_attempt(record, "PROMPT", SamplingParams(max_tokens=10), "s")
    assert record.finish_reason == "error"
    assert record.error_message is not None
    assert "renders token ids" in record.error_message and "text-only" in record.error_message


def test_the_solver_says_at_start_when_the_engine_cannot_serve_the_family() -> None:
    config = load_config()
    family = _IdsFamily.from_config(config)
    solver = Solver(_TextOnlyEngine(), None, config, default_policy(config), family)
    with pytest.raises(EngineError, match="renders token ids"):
        solver.check_ready()
    Solver(_TextOnlyEngine(), None, config, default_policy(config)).check_ready()  # openmath


async def test_a_family_that_cannot_render_answers_the_fallback(tmp_path) -> None:
    config = load_config(
        overrides=["prompt.family=harmony", f"prompt.harmony.vocabulary_dir={tmp_path}"]
    )
    solver = Solver(_TextOnlyEngine(), None, config, default_policy(config))
    result = await solver.solve("p1", "What is 2+2?", budget_s=10.0)
    assert result.used_fallback
    assert "render failed" in result.stop_reason and "o200k_base.tiktoken" in result.stop_reason


def test_the_replay_engine_refuses_a_token_id_family() -> None:
    from submission.engines.replay import ReplayEngine

    with pytest.raises(EngineError, match="replay serves text-family recordings"):
        ReplayEngine.from_config(load_config(overrides=["prompt.family=harmony"]))

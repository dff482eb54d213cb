"""The TIR loop with the harmony family: gpt-oss-shaped token streams (real recorded text,
tests/harmony_streams.py) through the real sandbox, three python calls (a timeout, an
error, a result) to a boxed answer; and the ids every round sends are exactly what
gpt-oss's Hugging Face tokenizer makes of their text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from submission.answer import AnswerRange
from submission.config import SandboxConfig, load_config
from submission.engines.base import SamplingParams
from submission.families.harmony import HarmonyFamily
from submission.families.harmony_vocab import TOKENIZER_FILE
from submission.records import AttemptRecord
from submission.sandbox import Sandbox
from submission.tir import TirLoop
from tests.harmony_streams import ScriptedHarmonyEngine, harmony_family, timeout_error_ok_script

CODE_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(spare_sessions=1, first_session_uid=63500)) as box:
        yield box


async def run_attempt(
    sandbox: Sandbox, *overrides: str
) -> tuple[AttemptRecord, ScriptedHarmonyEngine, HarmonyFamily]:
    family = harmony_family(*overrides)
    engine = ScriptedHarmonyEngine(timeout_error_ok_script(family), family)
    config = load_config(overrides=[f"tir.code_timeout_s={CODE_TIMEOUT_S}", *overrides])
    loop = TirLoop(engine, sandbox, family, config.tir, AnswerRange(0, 99_999))
    record = AttemptRecord(problem_id="harmony", attempt_num=0)
    prompt = family.render("Janet's ducks lay 16 eggs per day. ...")
    await loop.run_attempt(record, prompt, SamplingParams(max_tokens=4000), "harmony-a0")
    sandbox.close_session("harmony-a0")
    return record, engine, family


async def test_three_python_calls_a_timeout_and_an_error_reach_the_boxed_answer(
    sandbox: Sandbox, harmony_dir: Path
) -> None:
    record, engine, family = await run_attempt(sandbox)
    assert (record.answer, record.code_calls, record.errors, record.finish_reason) == (
        18,
        3,
        2,
        "stop",
    )
    decode = family.encoding.decode
    replies = [decode(engine.prompts[n][len(engine.prompts[n - 1]) :]) for n in (1, 2, 3)]
    tool = "<|start|>python to=assistant<|channel|>analysis<|message|>"
    assert replies[0].endswith(
        f"<|call|>{tool}[ERROR] Timed out waiting for Jupyter kernel output.<|end|>"
        "<|start|>assistant"
    )
    assert "NameError: name 'verlie_salary' is not defined" in replies[1]
    assert replies[2].endswith(f"<|call|>{tool}18\n<|end|><|start|>assistant")
    # The tentative \boxed{6} of the analysis channel did not answer; the final one did.
    assert "<|channel|>analysis<|message|>The solution to the problem is incorrect" in record.text
    assert "\\boxed{6}" in record.text
    assert record.text.endswith(
        "Janet makes $\\boxed{18}$ dollars every day at the farmers' market.<|return|>"
    )


async def test_the_ids_every_round_sends_are_what_the_tokenizer_makes_of_their_text(
    sandbox: Sandbox, harmony_dir: Path
) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(harmony_dir / TOKENIZER_FILE))
    _, engine, family = await run_attempt(sandbox)
    assert len(engine.prompts) == 4  # the prompt, then one after each of three tool replies
    for before, after in zip(engine.prompts, engine.prompts[1:], strict=False):
        assert after[: len(before)] == before  # the model's own ids kept, nothing re-tokenized
    for prompt in engine.prompts:
        text = family.encoding.decode(prompt)
        assert tokenizer.encode(text, add_special_tokens=False).ids == prompt


async def test_the_opt_in_cut_stops_at_the_final_channels_box(
    sandbox: Sandbox, harmony_dir: Path
) -> None:
    record, _, _ = await run_attempt(sandbox, "tir.stop_at_boxed=true")
    # The analysis channel's \boxed{6} (round 2) did not end it; the final channel's did.
    assert (record.answer, record.code_calls, record.finish_reason) == (18, 3, "boxed")
    assert not record.text.endswith("<|return|>")

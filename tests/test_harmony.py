"""The harmony family against openai-harmony with the real gpt-oss vocabulary.

Rendering and parsing, whole and token by token: the prompt, a tool call, the tool
reply, the final answer, a truncated stream, an unknown channel, tokens the parser
refuses. The model side is real recorded text (tests/harmony_streams.py turns ToRA
generations into gpt-oss messages). The ids a server would receive are checked against
gpt-oss's Hugging Face tokenizer (`tokenizers`) on the rendered text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from submission.commands.vocab import tiktoken_from_tokenizer
from submission.engines.base import Chunk
from submission.families.base import ToolCall, ToolResult
from submission.families.harmony import NO_OUTPUT_TEXT, HarmonyFamily
from submission.families.harmony_vocab import TOKENIZER_FILE, VOCABULARY_SHA256, file_sha256
from tests.harmony_streams import (
    EMBEDDED,
    HarmonyScript,
    harmony_family,
    script_from_tora,
    timeout_error_ok_script,
    tora_record,
)

PROBLEM = "Find the sum of all integer bases $b>9$ for which $17_{b}$ is a divisor of $97_{b}$."
GOLDEN_PROMPT = (
    "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\n\nReasoning: high\n\n# Tools\n\n## python\n\n"
    "Use this tool to execute Python code in your chain of thought. The code will not be shown"
    " to the user. This tool should be used for internal reasoning, but not for code that is"
    " intended to be visible to the user (e.g. when creating plots, tables, or files).\n\n"
    "When you send a message containing Python code to python, it will be executed in a"
    " stateful Jupyter notebook environment. python will respond with the output of the"
    " execution or time out after 120.0 seconds. The drive at '/mnt/data' can be used to save"
    " and persist user files. Internet access for this session is UNKNOWN. Depends on the"
    " cluster.\n\n# Valid channels: analysis, commentary, final. Channel must be included for"
    " every message.<|end|>"
    "<|start|>developer<|message|># Instructions\n\n"
    "You will solve the problem and return the final answer in \\boxed{}.<|end|>"
    f"<|start|>user<|message|>{PROBLEM}<|end|><|start|>assistant"
)


@pytest.fixture(scope="module")
def family(harmony_dir: Path) -> HarmonyFamily:
    return harmony_family()


@pytest.fixture(scope="module")
def hf_tokenizer(harmony_dir: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(harmony_dir / TOKENIZER_FILE))


@pytest.fixture(scope="module")
def janet(family: HarmonyFamily) -> HarmonyScript:
    """ToRA-70B's recorded generation for GSM8K problem 0: one call, then `\\boxed{18}`."""
    return script_from_tora(family, tora_record(EMBEDDED, 0)["code"][0])


def feed(transcript, ids, per_chunk: int, end: str = "stop", stop_token: int | None = None):
    """Feed `ids` in chunks of `per_chunk`; the last chunk ends the round."""
    for start in range(0, len(ids), per_chunk):
        piece = tuple(ids[start : start + per_chunk])
        if start + per_chunk < len(ids):
            transcript.feed(Chunk("", len(piece), token_ids=piece))
        else:
            final = Chunk("", len(piece), end, stop_token=stop_token, token_ids=piece)
            transcript.feed(final)
            return transcript.end_round(final)
    return None


def test_the_vocabulary_rebuilt_from_the_tokenizer_is_openai_harmonys(harmony_dir: Path) -> None:
    rebuilt = tiktoken_from_tokenizer((harmony_dir / TOKENIZER_FILE).read_bytes())
    import hashlib

    assert hashlib.sha256(rebuilt).hexdigest() == VOCABULARY_SHA256
    assert file_sha256(harmony_dir / "o200k_base.tiktoken") == VOCABULARY_SHA256


def test_the_prompt_renders_as_gpt_oss_expects(family: HarmonyFamily, hf_tokenizer) -> None:
    ids = family.render(PROBLEM)
    assert family.encoding.decode(ids) == GOLDEN_PROMPT
    # The ids a server receives are what the real tokenizer makes of that text.
    assert hf_tokenizer.encode(GOLDEN_PROMPT, add_special_tokens=False).ids == ids
    assert family.stop_token_ids == (200002, 200012)  # <|return|>, <|call|>
    assert (family.token_prompts, family.stop, family.tool_call_stop) == (True, (), "<|call|>")


def test_the_reasoning_effort_and_texts_are_settings(harmony_dir: Path) -> None:
    family = harmony_family(
        "prompt.harmony.reasoning_effort=low",
        "prompt.harmony.tool_description=Run Python.",
        "prompt.harmony.developer_instructions=",
        "prompt.harmony.user_message=Problem: {problem}",
    )
    text = family.encoding.decode(family.render("2+2?"))
    assert "Reasoning: low" in text and "## python\n\nRun Python.\n\n" in text
    assert "<|start|>developer" not in text
    assert text.endswith("<|start|>user<|message|>Problem: 2+2?<|end|><|start|>assistant")


@pytest.mark.parametrize("per_chunk", [1, 7, 10_000], ids=["token", "chunks", "whole"])
def test_a_tool_call_its_reply_and_the_final_answer(
    family: HarmonyFamily, janet: HarmonyScript, per_chunk: int
) -> None:
    prompt = family.render(PROBLEM)
    transcript = family.new_transcript(prompt)
    call = feed(transcript, janet.rounds[0], per_chunk, stop_token=family.call_token)
    assert call == ToolCall(janet.codes[0])
    shown = transcript.add_tool_result(ToolResult("18\n", "", "ok"))
    assert shown == "18\n"
    reply = transcript.next_prompt()[len(prompt) + len(janet.rounds[0]) :]
    assert family.encoding.decode(reply) == (
        "<|start|>python to=assistant<|channel|>analysis<|message|>18\n<|end|><|start|>assistant"
    )
    end = feed(transcript, janet.rounds[1], per_chunk, stop_token=janet.rounds[1][-1])
    assert end is None  # <|return|>: not a tool call
    assert transcript.answer(finished=True) == 18
    conversation = family.encoding.decode(transcript.next_prompt()[len(prompt) - 2 :])
    assert transcript.text == conversation.replace("<|start|>", "\n<|start|>")[1:]
    assert transcript.text.splitlines()[-1] == (
        "<|start|>assistant<|channel|>final<|message|>Janet makes $\\boxed{18}$ dollars every"
        " day at the farmers' market.<|return|>"
    )


def test_an_engine_that_leaves_the_stop_token_out_of_its_ids(
    family: HarmonyFamily, janet: HarmonyScript
) -> None:
    transcript = family.new_transcript(family.render(PROBLEM))
    without_stop = janet.rounds[0][:-1]
    call = feed(transcript, without_stop, 5, stop_token=family.call_token)
    assert call == ToolCall(janet.codes[0])
    assert transcript.next_prompt()[-1] == family.call_token


def test_the_tool_reply_follows_gpt_oss(family: HarmonyFamily) -> None:
    reply = family.tool_reply_text
    assert reply(ToolResult("4\n", "", "ok")) == "4\n"
    traceback = "Traceback (most recent call last):\nNameError: name 'x' is not defined\n"
    assert reply(ToolResult("partial\n\n", traceback, "error")) == "partial\n" + traceback
    assert reply(ToolResult("", traceback, "error")) == traceback
    assert reply(ToolResult("  \n", "", "ok")) == NO_OUTPUT_TEXT
    for status in ("timeout", "killed", "crashed"):
        assert reply(ToolResult("partial", "", status)) == (
            "[ERROR] Timed out waiting for Jupyter kernel output."
        )
    assert reply(ToolResult("x" * 1005, "", "ok")) == "x" * 1000 + "<output cut>"


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_a_truncated_stream_never_raises(
    family: HarmonyFamily, janet: HarmonyScript, cut: float
) -> None:
    transcript = family.new_transcript(family.render(PROBLEM))
    head = janet.rounds[0][: int(len(janet.rounds[0]) * cut)]  # cut inside the code
    assert feed(transcript, head, 4, end="length") is None
    assert transcript.answer(finished=False) is None
    assert transcript.parse_error is None


def test_a_final_answer_cut_before_its_end_still_reads_its_box(
    family: HarmonyFamily, janet: HarmonyScript
) -> None:
    transcript = family.new_transcript(family.render(PROBLEM))
    feed(transcript, janet.rounds[0], 4, stop_token=family.call_token)
    transcript.add_tool_result(ToolResult("18\n", "", "ok"))
    final = janet.rounds[1]
    box_end = family.encoding.decode(list(final)).index("}$") + 4
    cut = next(
        n for n in range(len(final)) if len(family.encoding.decode(list(final[:n]))) >= box_end
    )
    assert feed(transcript, final[:cut], 3, end="length") is None
    assert transcript.answer(finished=False) == 18


def test_an_unknown_channel_is_parsed_and_ignored(family: HarmonyFamily) -> None:
    enc = family.encoding
    text = (
        "<|channel|>scratch<|message|>So maybe \\boxed{6}.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>It is \\boxed{16}.<|return|>"
    )
    transcript = family.new_transcript(family.render(PROBLEM))
    ids = enc.encode(text, allowed_special="all")
    assert feed(transcript, ids, 2, stop_token=ids[-1]) is None
    assert transcript.parse_error is None
    assert transcript.answer(finished=True) == 16


def test_without_a_final_channel_the_models_own_text_answers(family: HarmonyFamily) -> None:
    enc = family.encoding
    text = "<|channel|>analysis<|message|>We get 7, so \\boxed{7}, and then more think"
    transcript = family.new_transcript(family.render(PROBLEM))
    feed(transcript, enc.encode(text, allowed_special="all"), 3, end="length")
    # As a text family reads a generation with no </think>: all of it (NeMo-Skills' fork).
    assert transcript.answer(finished=False) == 7


def test_tokens_the_parser_refuses_end_parsing_not_the_attempt(family: HarmonyFamily) -> None:
    enc = family.encoding
    # What random weights write: words where a header belongs, then a special token.
    garbage = enc.encode("hello <|end|> world<|message|> x<|call|>", allowed_special="all")
    transcript = family.new_transcript(family.render(PROBLEM))
    call = feed(transcript, garbage, 2, stop_token=family.call_token)
    assert call == ToolCall(None)  # a stop at <|call|> with no tool message: nothing to run
    assert transcript.parse_error is not None
    assert transcript.text == "<|start|>assistanthello <|end|> world<|message|> x<|call|>"
    assert transcript.answer(finished=True) is None


def test_the_scripted_rounds_hold_real_recorded_code(family: HarmonyFamily) -> None:
    script = timeout_error_ok_script(family)
    assert len(script.rounds) == 4
    assert "while present_age != 3 * present_age" in script.codes[0]
    assert "verlie_salary" in script.codes[1]
    assert [r[-1] for r in script.rounds] == [200012, 200012, 200012, 200002]

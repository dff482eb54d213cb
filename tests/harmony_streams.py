"""gpt-oss-shaped token streams built from real recorded model text, and an engine that serves them.

A recorded ToRA generation (submission/data, tests/data) becomes the harmony messages
gpt-oss writes: each round's prose on the analysis channel, its ```python block as a
message to `python` (content type `code`) on the analysis channel, and the closing
text (with its `\\boxed{}`) on the final channel. openai-harmony renders each message
(`HarmonyEncoding.render`); a round is what the model generates after the prompt's
`<|start|>assistant`, up to and including its stop token: `<|call|>` after a tool
call, `<|return|>` after the final answer (the token a server stops at; harmony
renders a lone final message with `<|end|>`).

`HarmonyScript.round_for(prompt_ids)` picks the round a prompt asks for: the number
of python tool replies already in it (like the replay engine's output blocks), so a
harness runs the code itself and feeds its own reply back. `ScriptedHarmonyEngine`
streams those rounds through the Engine seam as a token-id engine would; the
stand-in server of the openai engine's tests can serve the same rounds over HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from submission.config import PACKAGE_DATA, load_config
from submission.engines.base import Chunk, Prompt, SamplingParams
from submission.engines.replay import split_rounds
from submission.families.harmony import HarmonyFamily
from submission.families.tora import TORA_TAGS

EMBEDDED = PACKAGE_DATA / "tora70b_gsm8k_first250.jsonl"
TOOL_ERRORS = Path(__file__).parent / "data" / "tora_gsm8k_tool_errors.jsonl"
CODE_BEGIN = "```python"


def harmony_family(*overrides: str) -> HarmonyFamily:
    """The harmony family of the default config (its vocabulary from the cache folder)."""
    family = HarmonyFamily.from_config(load_config(overrides=["prompt.family=harmony", *overrides]))
    family.load()
    return family


def tora_record(path: Path, idx: int) -> dict[str, Any]:
    """The record with ToRA index `idx` in a transcript file."""
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["idx"] == idx:
            return record
    raise KeyError(f"no idx {idx} in {path}")


@dataclass(frozen=True)
class RecordedRound:
    """One tool round of a recorded generation: the prose, the code, what it printed then."""

    prose: str
    code: str
    recorded_output: str


def recorded_rounds(generation: str) -> tuple[list[RecordedRound], str]:
    """A ToRA generation's tool rounds and its closing text (the one with the box)."""
    texts, outputs = split_rounds(generation, TORA_TAGS)
    rounds = []
    for text, output in zip(texts, outputs, strict=False):
        prose, _, code = text.partition(CODE_BEGIN)
        code = code.strip("\n").removesuffix(TORA_TAGS.code_end).rstrip("\n")
        rounds.append(RecordedRound(prose.strip(), code, output))
    return rounds, texts[-1].strip()


@dataclass(frozen=True)
class HarmonyScript:
    """An attempt's rounds as the model's token ids (stop token last), and where they came from."""

    rounds: tuple[tuple[int, ...], ...]
    codes: tuple[str, ...]  # the code of each tool round
    recorded_outputs: tuple[str, ...]  # what the recording's authors saw it print
    closing: str  # the final channel's text
    tool_reply_header: tuple[int, ...]  # `<|start|>python`: how a tool reply begins

    def round_for(self, prompt_ids: Sequence[int]) -> tuple[int, ...]:
        """The round a prompt asks for: one past the tool replies already in it."""
        return self.rounds[min(self.replies_in(prompt_ids), len(self.rounds) - 1)]

    def replies_in(self, prompt_ids: Sequence[int]) -> int:
        header, ids = self.tool_reply_header, list(prompt_ids)
        width = len(header)
        return sum(1 for at in range(len(ids) - width + 1) if tuple(ids[at : at + width]) == header)


def harmony_script(
    family: HarmonyFamily, rounds: Sequence[RecordedRound], closing: str
) -> HarmonyScript:
    """The token rounds gpt-oss would generate for these recorded rounds and closing."""
    from openai_harmony import Message, Role

    encoding = family.encoding
    start_assistant = tuple(encoding.encode("<|start|>assistant", allowed_special="all"))
    token_rounds: list[tuple[int, ...]] = []
    for round_ in rounds:
        messages = []
        if round_.prose:
            messages.append(
                Message.from_role_and_content(Role.ASSISTANT, round_.prose).with_channel("analysis")
            )
        call = Message.from_role_and_content(Role.ASSISTANT, round_.code).with_channel("analysis")
        messages.append(call.with_recipient("python").with_content_type("code"))
        token_rounds.append(_generated(encoding, messages, start_assistant))
    final = Message.from_role_and_content(Role.ASSISTANT, closing).with_channel("final")
    last = list(_generated(encoding, [final], start_assistant))
    last[-1] = encoding.encode("<|return|>", allowed_special="all")[0]  # was <|end|>
    token_rounds.append(tuple(last))
    header = tuple(encoding.encode("<|start|>python", allowed_special="all"))
    return HarmonyScript(
        tuple(token_rounds),
        tuple(r.code for r in rounds),
        tuple(r.recorded_output for r in rounds),
        closing,
        header,
    )


def _generated(encoding: Any, messages: list[Any], start_assistant: tuple[int, ...]) -> tuple:
    """Rendered messages without the first `<|start|>assistant` (the prompt ends with it)."""
    ids = [token for message in messages for token in encoding.render(message)]
    assert tuple(ids[: len(start_assistant)]) == start_assistant
    return tuple(ids[len(start_assistant) :])


def script_from_tora(family: HarmonyFamily, generation: str) -> HarmonyScript:
    rounds, closing = recorded_rounds(generation)
    return harmony_script(family, rounds, closing)


def timeout_error_ok_script(family: HarmonyFamily) -> HarmonyScript:
    """Three real tool rounds spliced into one attempt, then a real boxed closing.

    1. ToRA-70B idx 881's code: an endless loop (a timeout);
    2. analysis: idx 881's own closing words on that loop (they hold a tentative
       `\\boxed{6}`, which must not count: it is not on the final channel), then
       ToRA-Code-34B idx 1132's code: a NameError;
    3. ToRA-70B idx 0's code (embedded), which prints 18;
    final: idx 0's closing sentence, `\\boxed{18}`.
    """
    timeout, reflection = recorded_rounds(tora_record(TOOL_ERRORS, 881)["code"][0])
    (error, *_), _ = recorded_rounds(tora_record(TOOL_ERRORS, 1132)["code"][0])
    ok, closing = recorded_rounds(tora_record(EMBEDDED, 0)["code"][0])
    error = RecordedRound(reflection, error.code, error.recorded_output)
    return harmony_script(family, [timeout[0], error, ok[0]], closing)


@dataclass
class ScriptedHarmonyEngine:
    """A token-id engine that streams a script's rounds, a few ids per chunk.

    Each chunk carries its ids and their text; the last one of a round ends with
    `finish_reason="stop"` and `stop_token` (its id is the last of `token_ids`, its
    text left out), or `length` when `max_tokens` runs out first.
    """

    script: HarmonyScript
    family: HarmonyFamily
    ids_per_chunk: int = 3
    name: str = "scripted-harmony"
    greedy: bool = False
    token_prompts: bool = True
    prompts: list[list[int]] = field(default_factory=list)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Chunk]:
        return self._stream(prompt, params)

    async def _stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Chunk]:
        if isinstance(prompt, str):
            yield Chunk("", 0, "error", error="scripted-harmony: takes token ids only")
            return
        self.prompts.append(list(prompt))
        ids = self.script.round_for(prompt)[: params.max_tokens]
        decode = self.family.encoding.decode
        for start in range(0, len(ids), self.ids_per_chunk):
            await asyncio.sleep(0)
            piece = ids[start : start + self.ids_per_chunk]
            last = start + self.ids_per_chunk >= len(ids)
            if not last:
                yield Chunk(decode(list(piece)), len(piece), token_ids=piece)
            elif piece[-1] in params.stop_token_ids:
                text = decode(list(piece[:-1]))
                yield Chunk(text, len(piece), "stop", stop_token=piece[-1], token_ids=piece)
            else:
                yield Chunk(decode(list(piece)), len(piece), "length", token_ids=piece)

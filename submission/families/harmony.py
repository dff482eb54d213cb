"""The harmony family: gpt-oss's own format, rendered and parsed by openai-harmony itself.

The prompt is token ids (`render_conversation_for_completion`): a system message
with the reasoning effort and the python tool declared, the developer
instructions, the user's problem, and the assistant's header. Generation stops at
`stop_tokens_for_assistant_actions()` (`<|return|>`, `<|call|>`). Each streamed
token goes through one `StreamableParser` per attempt. A message addressed to
`python` is a tool call: its content is the code. The reply is the python tool's
message (`Author(Role.TOOL, "python")`, recipient `assistant`, on the call's
channel), rendered and appended after the model's own ids (never re-tokenized
text) with the next assistant header, as gpt-oss's reference tool does
(gpt_oss/tools/python_docker/docker_tool.py, commit 0a9ec7f, `PythonTool`):
stdout, then stderr and tracebacks after a newline; `[WARN] No output
available...` when there is none; `[ERROR] ...` on a timeout.

The answer is the last `\\boxed{}` of the final channel. A model that never
reached the final channel is read from all its own text, as the text families
read a generation with no `</think>` (NeMo-Skills at the recipe's fork). A cut
stream, an unknown channel or tokens the parser refuses never raise: parsing
stops there, and the attempt keeps its ids and text.

openai_harmony is imported only when this family is used (`load`), after the
vocabulary folder is named (harmony_vocab.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from submission.answer import extract_answer, last_boxed
from submission.config import Config, HarmonyConfig
from submission.families.base import (
    DEAD_STATUSES,
    FamilyError,
    OutputLimits,
    Prompt,
    StreamChunk,
    ToolCall,
    ToolResult,
)
from submission.families.harmony_vocab import use_vocabulary, vocabulary_dir, vocabulary_problem

if TYPE_CHECKING:
    from openai_harmony import HarmonyEncoding, Message

log = logging.getLogger(__name__)

TOOL_NAME = "python"
CALL = "<|call|>"
# gpt-oss docker_tool.py (0a9ec7f), LocalJupyterSession.execute: an empty output's reply.
NO_OUTPUT_TEXT = (
    "[WARN] No output available. Use print() to output anything to stdout to receive the output"
)
# Tokens that end a message; the record's text starts a new line after each.
_MESSAGE_ENDS = ("<|end|>", "<|call|>")
# How much recent final-channel text the per-chunk box check looks at.
_BOX_TAIL_CHARS = 256


class HarmonyFamily:
    """gpt-oss through openai-harmony: token-id prompts, the python tool, channels."""

    name = "harmony"
    token_prompts = True
    session_prelude = ""  # gpt-oss's Jupyter tool filters nothing
    tool_call_stop = CALL
    stop: tuple[str, ...] = ()

    def __init__(self, settings: HarmonyConfig, limits: OutputLimits, stop_at_boxed: bool) -> None:
        self.settings = settings
        self.limits = limits
        self.stop_at_boxed = stop_at_boxed
        self._encoding: HarmonyEncoding | None = None
        self.call_token = -1

    @classmethod
    def from_config(cls, config: Config) -> HarmonyFamily:
        tir = config.tir
        return cls(
            config.prompt.harmony,
            OutputLimits(tir.max_output_chars, tir.truncation_marker),
            tir.stop_at_boxed,
        )

    def load(self) -> None:
        self.encoding  # noqa: B018 - loading is the point

    @property
    def encoding(self) -> HarmonyEncoding:
        """openai-harmony's gpt-oss encoding, loaded once from the checked vocabulary."""
        if self._encoding is None:
            folder = vocabulary_dir(self.settings.vocabulary_dir)
            if (problem := vocabulary_problem(folder)) is not None:
                raise FamilyError(f"harmony: {problem}")
            use_vocabulary(folder)
            harmony = _openai_harmony()
            self._encoding = harmony.load_harmony_encoding(
                harmony.HarmonyEncodingName.HARMONY_GPT_OSS
            )
            self.call_token = self._encoding.encode(CALL, allowed_special="all")[0]
        return self._encoding

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        # Sorted: openai-harmony gives them in no fixed order.
        return tuple(sorted(self.encoding.stop_tokens_for_assistant_actions()))

    def render(self, problem: str) -> list[int]:
        harmony = _openai_harmony()
        role, settings = harmony.Role, self.settings
        effort = harmony.ReasoningEffort[settings.reasoning_effort.upper()]
        system = harmony.SystemContent.new().with_reasoning_effort(effort)
        if settings.model_identity:
            system = system.with_model_identity(settings.model_identity)
        tool = (
            harmony.ToolNamespaceConfig(
                name=TOOL_NAME, description=settings.tool_description, tools=[]
            )
            if settings.tool_description
            else harmony.ToolNamespaceConfig.python()
        )
        said = [harmony.Message.from_role_and_content(role.SYSTEM, system.with_tools(tool))]
        if settings.developer_instructions:
            developer = harmony.DeveloperContent.new()
            developer = developer.with_instructions(settings.developer_instructions)
            said.append(harmony.Message.from_role_and_content(role.DEVELOPER, developer))
        user = settings.user_message.replace("{problem}", problem)
        said.append(harmony.Message.from_role_and_content(role.USER, user))
        return self._for_completion(said)

    def new_transcript(self, prompt: Prompt) -> HarmonyTranscript:
        if isinstance(prompt, str):
            raise TypeError("the harmony family continues token ids, not text")
        return HarmonyTranscript(self, prompt)

    def tool_reply_text(self, result: ToolResult) -> str:
        """What the python tool answers for one call (gpt-oss's reference format, cut)."""
        if result.status in DEAD_STATUSES:
            text = self.settings.timeout_text
        else:
            stdout, stderr = result.stdout, result.stderr
            text = (f"{stdout.rstrip()}\n{stderr}" if stdout else stderr) if stderr else stdout
            if not text.strip():
                text = NO_OUTPUT_TEXT
        if len(text) > self.limits.max_chars:
            text = text[: self.limits.max_chars] + self.limits.marker
        return text

    def tool_reply_ids(self, text: str, channel: str | None) -> list[int]:
        """The tool's message, then the next assistant header, as token ids."""
        harmony = _openai_harmony()
        author = harmony.Author.new(harmony.Role.TOOL, TOOL_NAME)
        message = harmony.Message.from_author_and_content(author, text).with_recipient("assistant")
        if channel:
            message = message.with_channel(channel)
        return self._for_completion([message])

    def _for_completion(self, messages: list[Message]) -> list[int]:
        """The messages rendered, then the assistant's header: what the model continues."""
        harmony = _openai_harmony()
        conversation = harmony.Conversation.from_messages(messages)
        assistant = harmony.Role.ASSISTANT
        return self.encoding.render_conversation_for_completion(conversation, assistant)


class HarmonyTranscript:
    """One attempt in harmony: its ids after the prompt, parsed token by token."""

    def __init__(self, family: HarmonyFamily, prompt: Prompt) -> None:
        harmony = _openai_harmony()
        self.family = family
        self.prompt = list(prompt)
        self._ids: list[int] = []  # the model's ids and the tool replies, after the prompt
        self._parser = harmony.StreamableParser(family.encoding, role=harmony.Role.ASSISTANT)
        self._harmony_error = harmony.HarmonyError
        self.parse_error: str | None = None  # why parsing stopped, if it did
        self._call_channel: str | None = None
        self._final_tail = ""

    def feed(self, chunk: StreamChunk) -> bool:
        if chunk.text and not chunk.token_ids:
            raise FamilyError("harmony: the engine streamed text without its token ids")
        watch = self.family.stop_at_boxed
        for token in chunk.token_ids:
            self._process(token)
            if watch and self.parse_error is None and self._parser.current_channel == "final":
                delta = self._parser.last_content_delta or ""
                self._final_tail = (self._final_tail + delta)[-_BOX_TAIL_CHARS:]
        tail = self._final_tail
        return watch and ("\\boxed" in tail or "\\fbox" in tail) and last_boxed(tail) is not None

    def end_round(self, final: StreamChunk) -> ToolCall | None:
        stop = final.stop_token
        if stop is not None and (not self._ids or self._ids[-1] != stop):
            self._process(stop)  # an engine that left the stop token out of its ids
        if final.finish_reason != "stop" or stop != self.family.call_token:
            return None
        message = self._last_message()
        if message is None or not (message.recipient or "").startswith(TOOL_NAME):
            return ToolCall(None)  # a call to no tool we have: the generation ends
        self._call_channel = message.channel
        return ToolCall("".join(getattr(part, "text", "") for part in message.content))

    def add_tool_result(self, result: ToolResult) -> str:
        shown = self.family.tool_reply_text(result)
        for token in self.family.tool_reply_ids(shown, self._call_channel):
            self._process(token)
        return shown

    def next_prompt(self) -> list[int]:
        return self.prompt + self._ids

    @property
    def text(self) -> str:
        """The conversation after the prompt as harmony renders it, one message a line:
        channels, tool calls, the tool's replies and the stop tokens all visible."""
        rendered = self.family.encoding.decode(self._ids)
        for end in _MESSAGE_ENDS:
            rendered = rendered.replace(f"{end}<|start|>", f"{end}\n<|start|>")
        return "<|start|>assistant" + rendered

    def answer(self, finished: bool) -> int | None:
        own = [said for said in self._said() if said.role == "assistant" and said.to_user]
        final = [said.text for said in own if said.channel == "final"]
        return extract_answer("\n".join(final or [said.text for said in own]), finished)

    def _process(self, token: int) -> None:
        self._ids.append(token)
        if self.parse_error is not None:
            return
        try:
            self._parser.process(token)
        except self._harmony_error as exc:
            self.parse_error = f"{exc}"
            log.warning("harmony: parsing stopped at token %d: %s", len(self._ids), exc)

    def _last_message(self) -> Message | None:
        if self.parse_error is not None:
            return None
        messages = self._parser.messages
        return messages[-1] if messages else None

    def _said(self) -> list[Said]:
        """Every parsed message, and the one a cut stream left open, as plain records."""
        parser = self._parser
        said = [
            Said(
                str(message.author.role.value),
                message.channel,
                message.recipient in (None, "assistant"),
                "".join(getattr(part, "text", "") for part in message.content),
            )
            for message in parser.messages
        ]
        if parser.current_role is not None and parser.current_content:
            recipient = parser.current_recipient
            said.append(
                Said(
                    str(parser.current_role.value),
                    parser.current_channel,
                    recipient in (None, "assistant"),
                    parser.current_content,
                )
            )
        return said


class Said(NamedTuple):
    """One message as the answer reads it."""

    role: str
    channel: str | None
    to_user: bool  # not addressed to a tool
    text: str


def _openai_harmony() -> Any:
    try:
        import openai_harmony
    except ImportError as exc:
        raise FamilyError(
            f"harmony: openai-harmony is not installed ({exc}); pip install openai-harmony==0.0.8"
        ) from None
    return openai_harmony

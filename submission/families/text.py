"""The text families' shared machinery: a chat template, code tags, and a text transcript.

A text family (openmath, tora) prompts with rendered text, marks code with tags
in the model's own text, and is shown its code's run in an output block. Its
module holds only data (`CodeTags` with an `OutputFormat`); everything here works
for any such family: rendering (NeMo-Skills `generic/math` with `qwen-instruct`),
finding the open code block at a round's end, the opt-in early cut at a final
`\\boxed{}`, the output block, and the answer (answer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from submission.answer import extract_answer, last_boxed
from submission.config import Config, PromptConfig
from submission.families.base import OutputLimits, Prompt, StreamChunk, ToolCall, ToolResult
from submission.families.text_output import OutputFormat

# How much recent text the per-chunk box check looks at (a boxed integer is short).
_BOX_TAIL_CHARS = 256


@dataclass(frozen=True)
class CodeTags:
    """How a text family marks code and reasoning, and how it is shown code output.

    The engine stops at `stop`; the transcript then appends `output_block` with the
    text `output` renders from the sandbox result (the block starts with the stop
    string, which the engine left out of its text).
    """

    code_begin: str
    code_end: str
    stop: str
    output_block: str  # contains "{output}"
    output: OutputFormat
    # Ends the model's reasoning ("" = the family has no reasoning section); an
    # early cut at a box (tir.stop_at_boxed) only fires on a box after it.
    reasoning_end: str

    def format_output(self, output: str) -> str:
        return self.output_block.replace("{output}", output)


QWEN_INSTRUCT = (
    "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
)


@dataclass(frozen=True)
class PromptTemplate:
    """Renders a problem into the model's prompt, and finds the problem in a prompt again."""

    user_message: str
    template: str  # contains "{user}"

    @classmethod
    def from_config(cls, config: PromptConfig) -> PromptTemplate:
        template = QWEN_INSTRUCT if config.template == "qwen-instruct" else "{user}"
        return cls(user_message=config.user_message, template=template)

    def render(self, problem: str) -> str:
        # str.format on the user message would choke on braces inside the problem.
        user = self.user_message.replace("{{}}", "{}").replace("{problem}", problem)
        return self.template.replace("{user}", user)

    def problem_of(self, prompt: str) -> str | None:
        """The problem text inside a rendered prompt (None when the prompt is not ours)."""
        user_prefix, _, user_suffix = self.user_message.replace("{{}}", "{}").partition("{problem}")
        head, _, tail = self.template.partition("{user}")
        start_marker = head + user_prefix
        if not prompt.startswith(start_marker):
            return None
        end_marker = user_suffix + tail
        end = prompt.find(end_marker, len(start_marker)) if end_marker else len(prompt)
        if end < 0:
            return None
        return prompt[len(start_marker) : end]

    def generation_of(self, prompt: str) -> str:
        """The assistant text after the rendered problem (what the model wrote so far)."""
        problem = self.problem_of(prompt)
        if problem is None:
            return ""
        return prompt[len(self.render(problem)) :]


class TextFamily:
    """A family that prompts with text and marks code with tags; subclasses give the tags."""

    name: ClassVar[str]
    tags: ClassVar[CodeTags]
    token_prompts = False
    stop_token_ids: tuple[int, ...] = ()

    def __init__(self, template: PromptTemplate, limits: OutputLimits, stop_at_boxed: bool) -> None:
        self.template = template
        self.limits = limits
        self.stop_at_boxed = stop_at_boxed

    @classmethod
    def from_config(cls, config: Config) -> TextFamily:
        tir = config.tir
        return cls(
            PromptTemplate.from_config(config.prompt),
            OutputLimits(tir.max_output_chars, tir.truncation_marker),
            tir.stop_at_boxed,
        )

    @property
    def session_prelude(self) -> str:
        return self.tags.output.session_prelude

    @property
    def tool_call_stop(self) -> str:
        return self.tags.stop

    @property
    def stop(self) -> tuple[str, ...]:
        return (self.tags.stop,)

    def load(self) -> None:
        return None

    def render(self, problem: str) -> str:
        return self.template.render(problem)

    def new_transcript(self, prompt: Prompt) -> TextTranscript:
        if not isinstance(prompt, str):
            raise TypeError(f"the {self.name} family continues text, not {type(prompt).__name__}")
        return TextTranscript(self, prompt)


class TextTranscript:
    """One attempt of a text family: the model's text and the output blocks, as pieces.

    Per chunk it appends the text and, when watching for a final box, looks only
    at a short tail; whole-text joins happen once per round, never per chunk.
    """

    def __init__(self, family: TextFamily, prompt: str) -> None:
        self.family = family
        self.tags = family.tags
        self.prompt = prompt
        self._parts: list[str] = []
        self._round_start = 0  # index in _parts where the current round began
        self._tail = ""

    def feed(self, chunk: StreamChunk) -> bool:
        self._parts.append(chunk.text)
        if not self.family.stop_at_boxed:
            return False
        tail = self._tail = (self._tail + chunk.text)[-_BOX_TAIL_CHARS:]
        if ("\\boxed" in tail or "\\fbox" in tail) and last_boxed(tail):
            if self._is_final_box("".join(self._parts)):
                return True
            self._tail = ""  # this box does not count; look for the next one
        return False

    def end_round(self, final: StreamChunk) -> ToolCall | None:
        round_text = "".join(self._parts[self._round_start :])
        self._round_start = len(self._parts)
        if final.finish_reason != "stop" or final.stop != self.tags.stop:
            return None
        return ToolCall(self._open_code_block(round_text))

    def add_tool_result(self, result: ToolResult) -> str:
        limits = self.family.limits
        shown = self.tags.output.render(
            result.stdout, result.stderr, result.status, limits.max_chars, limits.marker
        )
        self._parts.append(self.tags.format_output(shown))
        self._round_start = len(self._parts)
        return shown

    def next_prompt(self) -> str:
        return self.prompt + "".join(self._parts)

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def answer(self, finished: bool) -> int | None:
        return extract_answer(self.text, finished)

    def _is_final_box(self, text: str) -> bool:
        """Whether the text's last box is an answer: outside code and after the reasoning."""
        box = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
        reasoning_end = self.tags.reasoning_end
        if reasoning_end and text.rfind(reasoning_end, 0, box) < 0:
            return False
        begin = text.rfind(self.tags.code_begin, 0, box)
        if begin < 0:
            return True
        return text.find(self.tags.code_end, begin + len(self.tags.code_begin), box) >= 0

    def _open_code_block(self, text: str) -> str | None:
        """The code of the code block still open at the end of `text`, or None.

        `text` ends where the engine stopped (the stop string left out). Where the
        stop string is the code end (openmath), a block is open when the last code
        begin comes after the last code end, as NeMo-Skills checks; where the model
        closes its block itself (ToRA), when there is a code begin at all.
        """
        begin = text.rfind(self.tags.code_begin)
        if begin < 0:
            return None
        code = text[begin + len(self.tags.code_begin) :]
        if self.tags.code_end == self.tags.stop:
            if self.tags.code_end in code:
                return None
        else:
            code = code.rstrip().removesuffix(self.tags.code_end)
        # Leading blank lines go, as IPython drops them before it runs a cell (so line
        # numbers in error messages are the ones NeMo-Skills' IPython reports).
        return code.strip("\n")

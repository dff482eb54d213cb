"""Prompt rendering and each model family's tags, as data (NeMo-Skills `generic/math` +
`qwen-instruct`; the openmath tags from its prompt/code_tags/openmath.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from submission.config import PromptConfig
from submission.tool_output import OUTPUT_FORMATS, OutputFormat


@dataclass(frozen=True)
class CodeTags:
    """How a model family marks code and reasoning, and how it is shown code output.

    The engine stops at `stop`; the harness then appends `output_block` with the
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


CODE_TAGS: dict[str, CodeTags] = {
    # OpenMath-Nemotron: <tool_call> and </tool_call> are single tokens in Qwen2.5's vocabulary.
    "openmath": CodeTags(
        code_begin="<tool_call>",
        code_end="</tool_call>",
        stop="</tool_call>",
        output_block="</tool_call>\n```output\n{output}```\n",
        output=OUTPUT_FORMATS["openmath"],
        reasoning_end="</think>",
    ),
    # ToRA: the model closes its ```python block and opens ```output itself; we stop there.
    "tora": CodeTags(
        code_begin="```python",
        code_end="```",
        stop="```output",
        output_block="```output\n{output}```\n",
        output=OUTPUT_FORMATS["tora"],
        reasoning_end="",
    ),
}

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

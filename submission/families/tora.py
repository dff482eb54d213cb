"""The tora family: ToRA's ```python / ```output blocks, as its recorded transcripts show them.

The model closes its ```python block and opens ```output itself; the engine stops
there and the output follows as printed (ToRA's executor). On a timeout the
block holds the text the recorded GSM8K transcripts show (submission/data).
ToRA models do not reason before answering: no reasoning end.
"""

from __future__ import annotations

from submission.families.text import CodeTags, TextFamily
from submission.families.text_output import OutputFormat

TORA_OUTPUT = OutputFormat(
    strip=False,
    traceback_with_stdout=False,
    simplify_errors=False,
    drop_text="",
    dead_text="timeout_decorator.timeout_decorator.TimeoutError: 'Timed Out'\n",
    session_prelude="",
)

TORA_TAGS = CodeTags(
    code_begin="```python",
    code_end="```",
    stop="```output",
    output_block="```output\n{output}```\n",
    output=TORA_OUTPUT,
    reasoning_end="",
)


class ToraFamily(TextFamily):
    """ToRA (the embedded replay's recordings)."""

    name = "tora"
    tags = TORA_TAGS

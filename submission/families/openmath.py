"""The openmath family: OpenMath-Nemotron's `<tool_call>` tags and NeMo-Skills' output block.

The tags come from NeMo-Skills' prompt/code_tags/openmath.yaml; `<tool_call>` and
`</tool_call>` are single tokens in Qwen2.5's vocabulary, and the model reasons
before `</think>`. What the model sees after its `</tool_call>` reproduces
NeMo-Skills' code execution byte for byte, as read in the fork the AIMO-2 recipe
installs (alessiodevoto/NeMo-Skills, branch aimo-inference, commit 27d7b1c3):
`nemo_skills/code_execution/sandbox.py` (`Sandbox.execute_code`: IPython capture,
`.strip()`, the cut, `simplify_errors`, "Timed out"), `local_sandbox_server.py` (a
dead or timed-out process answers "Timed out") and `code_execution/utils.py`
(`format_code_output`, "qwen" style: stdout then stderr). docs/harness.md lists
the rules, the golden cases and the few known gaps.
"""

from __future__ import annotations

from submission.families.text import CodeTags, TextFamily
from submission.families.text_output import OutputFormat

OPENMATH_OUTPUT = OutputFormat(
    strip=True,
    traceback_with_stdout=True,
    simplify_errors=True,
    drop_text="Out[1]: ",
    dead_text="Timed out\n",
    session_prelude="import warnings\nwarnings.filterwarnings('ignore')\n",
)

OPENMATH_TAGS = CodeTags(
    code_begin="<tool_call>",
    code_end="</tool_call>",
    stop="</tool_call>",
    output_block="</tool_call>\n```output\n{output}```\n",
    output=OPENMATH_OUTPUT,
    reasoning_end="</think>",
)


class OpenmathFamily(TextFamily):
    """OpenMath-Nemotron (the AIMO-2 recipe's model) as NeMo-Skills runs it."""

    name = "openmath"
    tags = OPENMATH_TAGS

"""What a text family shows the model of its code's run: the rules, as data.

A family's `OutputFormat` turns a sandbox result (stdout, stderr, status) into the
text inside its output block; the block itself (```output ... ```) is the family's
`CodeTags.output_block` (text.py). A new text family is a new `OutputFormat` value in
its own module (openmath.py, tora.py), never a new branch in the code. The rules
exist to reproduce NeMo-Skills' code execution byte for byte (openmath.py cites the
source); docs/harness.md lists them and the few known gaps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from submission.families.base import DEAD_STATUSES

# Where an IPython-Plain traceback starts in stderr (runtime error, SystemExit); a
# syntax error's report has neither header, so then all of stderr is the report.
_TRACEBACK_HEADERS = ("Traceback (most recent call last):", "An exception has occurred")
# NeMo-Skills' simplify_errors: ANSI colour codes out ...
_ANSI = re.compile(r"\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])")
# ... and each frame's cell-location line. NeMo's bare InteractiveShell names the cell
# `File <ipython-input-1-...>:N`; an IPython-Plain session names it `Cell In[1], line N`.
_CELL_LOCATION = re.compile(r"^\s*(?:File <ipython-|Cell In\[\d+\], line \d+)")


@dataclass(frozen=True)
class OutputFormat:
    """How one model family saw code output in training."""

    # Each stream `.strip()`ed, cut, and given one "\n" when not empty (NeMo-Skills).
    strip: bool
    # The traceback is cut together with stdout, as one stream: IPython prints tracebacks
    # to stdout, so NeMo-Skills' stdout holds the prints and then the traceback.
    traceback_with_stdout: bool
    # ANSI codes and traceback cell-location lines removed (NeMo-Skills' simplify_errors).
    simplify_errors: bool
    # Removed wherever it appears (NeMo-Skills drops IPython's display prompt).
    drop_text: str
    # Shown instead of any output when the cell timed out or its process died;
    # "" = the sandbox's own streams.
    dead_text: str
    # Run once in every new session before the model's code (warnings filter etc.).
    session_prelude: str

    def render(self, stdout: str, stderr: str, status: str, max_chars: int, marker: str) -> str:
        """The text inside the output block for one call."""
        if status in DEAD_STATUSES and self.dead_text:
            return self.dead_text
        if self.traceback_with_stdout and status == "error":
            user_stderr, traceback = _split_traceback(stderr)
            stdout, stderr = stdout + traceback, user_stderr
        return self._stream(stdout, max_chars, marker) + self._stream(stderr, max_chars, marker)

    def _stream(self, text: str, max_chars: int, marker: str) -> str:
        if self.drop_text:
            text = text.replace(self.drop_text, "")
        if self.strip:
            text = text.strip()
        if len(text) > max_chars:
            text = text[:max_chars] + marker
        if self.simplify_errors and text:
            text = _simplify_errors(text)
        if self.strip and text:
            text += "\n"
        return text


def _split_traceback(stderr: str) -> tuple[str, str]:
    """(what the code wrote to stderr, the traceback after it)."""
    starts = [
        at for header in _TRACEBACK_HEADERS if (at := _line_start_find(stderr, header)) is not None
    ]
    start = min(starts, default=0)
    return stderr[:start], stderr[start:]


def _line_start_find(text: str, header: str) -> int | None:
    at = text.find(header)
    while at > 0 and text[at - 1] != "\n":
        at = text.find(header, at + 1)
    return None if at < 0 else at


def _simplify_errors(text: str) -> str:
    text = _ANSI.sub("", text)
    return "\n".join(line for line in text.split("\n") if not _CELL_LOCATION.match(line))

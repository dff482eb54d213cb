"""How a re-run code block's output differs from the recorded one.

Shared by the TIR loop (replay divergences) and the `fidelity` command.
"""

from __future__ import annotations

import math
import re
from typing import Literal

MismatchKind = Literal[
    "match", "whitespace", "float_format", "truncation", "error_text", "randomness", "semantic"
]
KINDS: tuple[MismatchKind, ...] = (
    "match", "whitespace", "float_format", "truncation", "error_text", "randomness", "semantic",
)  # fmt: skip

_CUT_MARKERS = ("<output cut>", "...", "…")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
# The last line of a traceback, or an executor's one-line error report: "NameError: ...".
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit|Interrupt))\b:?(.*)$")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT_RTOL = 1e-6


def classify_mismatch(ours: str, recorded: str) -> MismatchKind:
    """How our output for a code block differs from the recorded one (first rule that holds).

    - ``match``: equal once leading and trailing whitespace of the whole text is
      removed (executors frame the output block differently).
    - ``whitespace``: equal once every run of whitespace becomes one space.
    - ``float_format``: the same text with the same numbers, written differently
      (``18.0`` against ``18``, ``0.30000000000000004`` against ``0.3``; relative
      tolerance 1e-6).
    - ``truncation``: one side was cut (it ends with a cut marker such as
      ``<output cut>`` or ``...``, or is simply shorter) and is a prefix of the other.
    - ``error_text``: both report an error of the same exception type, told
      differently (a full traceback against a one-line report, other wording, the
      timeout message of another executor).
    - ``randomness``: differs only in what changes from run to run: memory
      addresses (``0x7f...``), or the same tokens in another order (set and dict
      order under hash randomisation).
    - ``semantic``: anything else: a real difference in what the code computed.
    """
    a, b = ours.strip(), recorded.strip()
    if a == b:
        return "match"
    if " ".join(a.split()) == " ".join(b.split()):
        return "whitespace"
    if _same_numbers(a, b):
        return "float_format"
    if _is_truncation(a, b) or _is_truncation(b, a):
        return "truncation"
    error_a, error_b = _error_type(a), _error_type(b)
    if error_a is not None and error_b is not None:
        both_timeouts = "Timeout" in error_a and "Timeout" in error_b
        if error_a == error_b or both_timeouts:
            return "error_text"
    if _ADDRESS.sub("0x", a) == _ADDRESS.sub("0x", b) or sorted(a.split()) == sorted(b.split()):
        return "randomness"
    return "semantic"


def _is_truncation(cut: str, full: str) -> bool:
    stem = cut
    for marker in _CUT_MARKERS:
        stem = stem.removesuffix(marker).rstrip()
    return bool(stem) and len(stem) < len(full) and full.startswith(stem)


def _error_type(text: str) -> str | None:
    """The exception type named by the text's last line, if it is an error report."""
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines[-3:]):
        match = _ERROR_LINE.match(line.strip())
        if match:
            return match.group(1)
    return None


def _same_numbers(a: str, b: str) -> bool:
    numbers_a, numbers_b = _NUMBER.findall(a), _NUMBER.findall(b)
    if not numbers_a or len(numbers_a) != len(numbers_b):
        return False
    if _NUMBER.sub("#", a).split() != _NUMBER.sub("#", b).split():
        return False
    return all(
        math.isclose(float(x), float(y), rel_tol=_FLOAT_RTOL, abs_tol=1e-12)
        for x, y in zip(numbers_a, numbers_b, strict=True)
    )

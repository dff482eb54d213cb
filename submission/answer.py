"""From a generation's text to one integer answer (or None), and the profile's range rule.

As NeMo-Skills evaluates this model (`++parse_reasoning=True`: the text after the last
`</think>` when there is one, else all of it), the answer is the last `\\boxed{...}`
(or `\\fbox{...}`) with matched braces in that text; failing that, and only for a
generation that finished (not cut by the token limit or the deadline), a closing
"the answer is N". Its content is normalised the way math models
write integers: thousands separators, units in `\\text{}`, degrees, percent signs,
`18.0`, `\\frac{8}{2}`, unicode minus. Anything that is not an integer is None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_TEXT_COMMAND = re.compile(
    r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}"
)
_FRACTION = re.compile(r"^(-?)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")
_SHORT_FRACTION = re.compile(r"^(-?)\\[dt]?frac(\d)(\d)$")
_SLASH_FRACTION = re.compile(r"^(-?\d+)/(-?\d+)$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_NUMBER_WITH_UNIT = re.compile(r"^([+-]?\d+(?:\.\d*)?)[A-Za-z]+$")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# A number after "answer is": thousands groups only where they are groups ("17, i.e." is 17).
_ANSWER_IS = re.compile(
    r"answer\s+is\s*:?\s*\$*\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)", re.IGNORECASE
)
REASONING_END = "</think>"
# Decorations that never change an integer's value.
_DROP = (
    "\\left",
    "\\right",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\ ",
    "~",
    "\\$",
    "$",
    "\\%",
    "%",
    "^\\circ",
    "^{\\circ}",
    "\\circ",
    "°",
    "\\displaystyle",
    "{,}",
)


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{} / \\fbox{} (or `\\boxed 5`), braces matched; else None."""
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    rest = text[start + len(cmd) :]
    if rest.startswith(" "):  # `\boxed 5`: the argument is the next token
        token = re.match(r"\s*([^\s$]+)", rest)
        return token.group(1) if token else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[1:i]
    return None  # unbalanced: the box is not complete (yet)


def normalize_integer(content: str) -> int | None:
    """An integer from a boxed answer's content, or None when it is not one."""
    s = content.strip().replace("\u2212", "-").replace("\u2013", "-")
    # \text{...}: keep it when it carries the number, drop it when it is a unit.
    s = _TEXT_COMMAND.sub(lambda m: m.group(1) if re.search(r"\d", m.group(1)) else "", s)
    for token in _DROP:
        s = s.replace(token, "")
    s = _THOUSANDS.sub("", s.replace(" ", ""))
    if "=" in s:  # "x=5": the value is what follows the last "="
        s = s.rsplit("=", 1)[1]
    s = s.rstrip(".")
    while s.startswith("{") and s.endswith("}"):
        s = s[1:-1]
    if unit := _NUMBER_WITH_UNIT.match(s):  # "18dollars" (a unit left over from \text{})
        s = unit.group(1)
    if _NUMBER.match(s):
        value = Fraction(s)
    elif match := _FRACTION.match(s) or _SHORT_FRACTION.match(s):
        sign, num, den = match.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den)) * (-1 if sign else 1)
    elif match := _SLASH_FRACTION.match(s):
        num, den = match.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
    else:
        return None
    return int(value) if value.denominator == 1 else None


def answer_text(text: str) -> str:
    """The part of a generation the answer is read from: after the last `</think>`, if any."""
    _, sep, after = text.rpartition(REASONING_END)
    return after.strip() if sep else text


def extract_answer(text: str, finished: bool = True) -> int | None:
    """The integer answer of a generation: last box after the reasoning, else (finished
    generations only) a final "the answer is N"."""
    text = answer_text(text)
    boxed = last_boxed(text)
    if boxed is not None:
        return normalize_integer(boxed)
    if not finished:
        return None
    tail = text[-300:]
    matches = _ANSWER_IS.findall(tail)
    return normalize_integer(matches[-1]) if matches else None


@dataclass(frozen=True)
class AnswerRange:
    """The competition's answer range; out of range is no answer unless reduction is asked for."""

    minimum: int
    maximum: int
    reduce_modulo: bool = False

    def apply(self, value: int | None) -> int | None:
        if value is None:
            return None
        if self.minimum <= value <= self.maximum:
            return value
        if self.reduce_modulo and self.minimum == 0:
            return value % (self.maximum + 1)
        return None

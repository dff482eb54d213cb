"""A problems CSV read row by row: the good rows, and every bad row with its line and why.

The collector's input (`id,problem[,answer]`, the competition's reference.csv
format). Unlike a gateway run, which refuses a whole file that is not a valid
test file, the collector skips a bad row and reports it by line: a row with the
wrong number of fields, an empty id or problem, an id seen on an earlier line,
or an answer that is not an integer.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from submission.answer import normalize_integer


class ProblemRowsError(ValueError):
    """A problems file that can't be read at all (missing, no header, no id/problem column)."""


@dataclass(frozen=True)
class ProblemRow:
    problem_id: str
    problem: str
    answer: int | None  # None: not given (pass@k can't be graded for it)
    line: int  # where its record starts in the file (1-based, the header is line 1)

    @property
    def digest(self) -> str:
        """A short hash of the problem text: a resume refuses rows collected for other text."""
        return hashlib.sha256(self.problem.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str


def read_problem_rows(path: Path) -> tuple[list[ProblemRow], list[BadRow]]:
    if not path.is_file():
        raise ProblemRowsError(f"problem file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProblemRowsError(f"problem file {path} is not readable UTF-8 text: {exc}") from None
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise ProblemRowsError(f"problem file {path} is empty") from None
    except csv.Error as exc:
        raise ProblemRowsError(f"problem file {path}: bad header: {exc}") from None
    missing = [name for name in ("id", "problem") if name not in header]
    if missing:
        raise ProblemRowsError(f"problem file {path} lacks column(s) {missing} (has {header})")
    column = {name: header.index(name) for name in ("id", "problem", "answer") if name in header}
    good: list[ProblemRow] = []
    bad: list[BadRow] = []
    first_line: dict[str, int] = {}
    line = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            bad.append(BadRow(line, f"not CSV: {exc}"))
            line = reader.line_num + 1
            continue
        row_line, line = line, reader.line_num + 1
        if not fields:
            continue  # a blank line
        reason = _row_error(fields, header, column, first_line)
        if reason is not None:
            bad.append(BadRow(row_line, reason))
            continue
        problem_id = fields[column["id"]].strip()
        answer_text = fields[column["answer"]].strip() if "answer" in column else ""
        answer = normalize_integer(answer_text) if answer_text else None
        first_line[problem_id] = row_line
        good.append(ProblemRow(problem_id, fields[column["problem"]], answer, row_line))
    return good, bad


def _row_error(
    fields: list[str], header: list[str], column: dict[str, int], first_line: dict[str, int]
) -> str | None:
    if len(fields) != len(header):
        return f"{len(fields)} fields, the header has {len(header)}"
    problem_id = fields[column["id"]].strip()
    if not problem_id:
        return "empty id"
    if problem_id in first_line:
        return f"id {problem_id!r} already on line {first_line[problem_id]}"
    if not fields[column["problem"]].strip():
        return f"id {problem_id!r}: empty problem"
    if "answer" in column:
        answer = fields[column["answer"]].strip()
        if answer and normalize_integer(answer) is None:
            return f"id {problem_id!r}: answer {answer!r} is not an integer"
    return None

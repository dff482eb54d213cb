"""The attempt log: recorded attempts per problem, and the engine speed they imply.

An attempt log (CSV or parquet) has one row per recorded attempt: `problem_id`,
`answer`, `is_none` (cut off before answering), `tokens`, `time_s`, and optionally
`is_correct`, `code_calls`, `errors`, `entropy`. The simulator and the sim engine
both read it through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

REQUIRED_COLUMNS = ("problem_id", "answer", "is_none", "tokens", "time_s")


class AttemptLogError(ValueError):
    """An attempt log that cannot be simulated."""


@dataclass(frozen=True)
class LoggedAttempt:
    answer: int | None
    tokens: int
    finishes: bool  # False: cut off in the recording, so it never finishes here
    code_calls: int = 0
    errors: int = 0
    entropy: float | None = None


@dataclass(frozen=True)
class LoggedProblem:
    problem_id: str
    correct_answer: int | None  # None: no attempt in the log was right
    attempts: tuple[LoggedAttempt, ...]


def load_attempt_log(path: str | Path) -> pl.DataFrame:
    """Read an attempt log (CSV or parquet) and check the columns the simulator needs."""
    path = Path(path)
    if not path.is_file():
        raise AttemptLogError(f"attempt log not found: {path}")
    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise AttemptLogError(f"{path}: missing columns {missing} (need {list(REQUIRED_COLUMNS)})")
    if frame.height == 0:
        raise AttemptLogError(f"{path}: no attempts")
    return frame


def problems_from_log(frame: pl.DataFrame) -> list[LoggedProblem]:
    """One LoggedProblem per problem_id, in the log's order of first appearance."""
    has = set(frame.columns)
    problems = []
    for (pid,), rows in frame.group_by("problem_id", maintain_order=True):
        correct = None
        if "is_correct" in has:
            right = rows.filter(pl.col("is_correct").cast(pl.Boolean).fill_null(False))
            if right.height:
                correct = int(right["answer"][0])
        attempts = tuple(
            LoggedAttempt(
                answer=None if row["answer"] is None or row["is_none"] else int(row["answer"]),
                tokens=max(1, int(row["tokens"])),
                finishes=not bool(row["is_none"]),
                code_calls=int(row.get("code_calls") or 0),
                errors=int(row.get("errors") or 0),
                entropy=row.get("entropy"),
            )
            for row in rows.iter_rows(named=True)
        )
        problems.append(LoggedProblem(str(pid), correct, attempts))
    return problems


def calibrate_single_stream_rate(frame: pl.DataFrame, concurrency: int, contention: float) -> float:
    """R1: the median attempt's tokens per second, with the recorded concurrency's slow-down undone.

    The median, not the log's total tokens over its total seconds: an attempt's
    seconds also hold its code runs (about 2 s per call on hard50, fitted), which
    this decode-only model has no place for, so the long, code-heavy attempts
    would pull the rate of every stream down. With the median the simulator
    reproduces the anchors' scores of issue 4's independent evaluation
    (docs/policy.md).
    """
    timed = frame.filter(pl.col("time_s") > 0)
    if timed.height == 0:
        raise AttemptLogError("no attempt with time_s > 0 to calibrate the engine's speed from")
    per_stream = float((timed["tokens"] / timed["time_s"]).median())
    return per_stream * (1.0 + contention * (concurrency - 1))

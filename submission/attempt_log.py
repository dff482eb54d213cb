"""The attempt log: recorded attempts per problem, and the engine speed they imply.

An attempt log (CSV or parquet) has one row per recorded attempt: `problem_id`,
`answer`, `is_none` (cut off before answering), `tokens`, `time_s`, and optionally
`is_correct`, `code_calls`, `errors`, `entropy`. The simulator and the sim engine
both read it through this module, and calibrate their engine model from it
(`calibrate_engine`). The default log is the embedded synthetic one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from submission.config import SimEngineConfig

REQUIRED_COLUMNS = ("problem_id", "answer", "is_none", "tokens", "time_s")
# The embedded synthetic log (submission/synthetic_log.py draws it from a model fitted to a
# real log of 25 hard problems x 24 attempts, 24 streams at once, which has no licence).
DEFAULT_ATTEMPTS = Path(__file__).resolve().parent / "data" / "synthetic_attempts.csv"


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


@dataclass(frozen=True)
class EngineCalibration:
    """The engine the log was recorded on, as the simulator models it."""

    single_stream_rate: float  # R1: tokens/s of one stream alone on the engine
    code_call_s: float  # seconds each code call keeps its stream off the engine


def calibrate_engine(frame: pl.DataFrame, concurrency: int, contention: float) -> EngineCalibration:
    """Fit time_s = tokens / r + code_calls * c over the timed attempts (least squares).

    r is a stream's decode rate at the recorded concurrency; R1 undoes that
    concurrency's slow-down: R1 = r * (1 + a*(concurrency-1)). Charging the code
    calls their own time keeps the long, code-heavy attempts from reading as a
    slow engine (on hard50: r = 62.5 tokens/s, c = 2.1 s per call). A log that
    records each attempt's own mean concurrency (`collect` writes a `concurrency`
    column) has each attempt's tokens weighted by its own slow-down instead:
    time_s = tokens * (1 + a*(n_i - 1)) / R1 + code_calls * c.
    """
    timed = frame.filter(pl.col("time_s") > 0)
    if timed.height == 0:
        raise AttemptLogError("no attempt with time_s > 0 to calibrate the engine's speed from")
    if recorded_concurrency(timed):
        slowdown = 1.0 + contention * (timed["concurrency"].cast(pl.Float64) - 1.0).clip(0.0)
        return _fit_rate(timed, timed["tokens"].cast(pl.Float64) * slowdown)
    rate = _fit_rate(timed, timed["tokens"].cast(pl.Float64))
    return EngineCalibration(
        rate.single_stream_rate * (1.0 + contention * (concurrency - 1)), rate.code_call_s
    )


def recorded_concurrency(frame: pl.DataFrame) -> bool:
    """Whether every attempt records the streams in flight while it ran."""
    return "concurrency" in frame.columns and frame["concurrency"].null_count() == 0


def _fit_rate(timed: pl.DataFrame, tokens: pl.Series) -> EngineCalibration:
    """Least squares of time_s on (weighted) tokens and code calls: 1/seconds-per-token and c."""
    calls = (
        timed["code_calls"].cast(pl.Float64).fill_null(0.0)
        if "code_calls" in timed.columns
        else pl.Series([0.0] * timed.height)
    )
    seconds = timed["time_s"].cast(pl.Float64)
    # Normal equations of the two-parameter fit (seconds per token, seconds per call).
    stt, stc, scc = (tokens * tokens).sum(), (tokens * calls).sum(), (calls * calls).sum()
    sty, scy = (tokens * seconds).sum(), (calls * seconds).sum()
    det = stt * scc - stc * stc
    if scc == 0 or det <= 1e-9 * stt * scc:
        per_token, per_call = sty / stt, 0.0  # no code calls to tell apart
    else:
        per_token = (sty * scc - scy * stc) / det
        per_call = (scy * stt - sty * stc) / det
    if per_token <= 0 or per_call < 0:
        # Calls that explain all the time (or negative call time): charge tokens only.
        per_token, per_call = sty / stt, 0.0
    return EngineCalibration(1.0 / per_token, per_call)


def engine_calibration(frame: pl.DataFrame, sim: SimEngineConfig) -> EngineCalibration:
    """The fit from the log, with what `engine.sim` sets explicitly put in its place."""
    fitted = calibrate_engine(frame, sim.concurrency, sim.contention)
    return EngineCalibration(
        sim.tokens_per_s or fitted.single_stream_rate,
        fitted.code_call_s if sim.code_call_s < 0 else sim.code_call_s,
    )

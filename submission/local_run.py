"""A local run, written once: a test file through the gateway to a started harness, then outputs.

Both `python -m submission replay` and the kernel's interactive session use
it: point `predict` at the harness, serve the test file through the real
`kaggle_evaluation` when one was found (else the built-in replay), check the
submission, close the harness, and write the attempt log and report next to
`submission.parquet`. It also reads problem files and picks a usable output
folder, the two things both callers check before starting, and claims that
folder for one run at a time (`claim_out_dir`).

Ctrl-C during a run keeps what finished: the attempt log, the problem table
and the report of the problems answered so far, and their answers in
`submission.partial.parquet` (never `submission.parquet`, which the gateway
writes only for a whole run); `LocalRun.interrupted` says so.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from submission.answer import normalize_integer
from submission.config import Config
from submission.harness import Harness

log = logging.getLogger(__name__)

KAGGLE_ROOT = Path("/kaggle")
# Where outputs go when the config names a /kaggle folder on a machine without one.
LOCAL_OUT_DIR = Path("out")
# Exit codes of a local run (the kernel's are the same numbers, kernel.py): 1 the run failed,
# 2 bad input, 3 the engine failed to load, 130 interrupted (Ctrl-C).
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_READY, EXIT_INTERRUPTED = 1, 2, 3, 130
PARTIAL_SUBMISSION = "submission.partial.parquet"


class ProblemFileError(ValueError):
    """A problem file that can't be used, with a one-line reason."""


class OutDirBusy(RuntimeError):
    """Another run writes to this output folder now."""


@contextmanager
def claim_out_dir(out_dir: Path) -> Iterator[None]:
    """This run's alone while the block runs: a second run into the folder is refused.

    An advisory lock (flock) on the folder itself (nothing is written there for
    it), released by the kernel when the process ends, however it ends.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutDirBusy(
                f"{out_dir} is in use by another run: wait for it, or give --out another folder"
            ) from None
        yield
    finally:
        os.close(descriptor)


@dataclass
class LocalRun:
    """What a local run produced: the submission (None when the gateway failed) and its faults."""

    submission: Path | None
    faults: list[str]
    written: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # the caller's extra report lines
    interrupted: bool = False  # Ctrl-C: `written` holds what finished

    @property
    def ok(self) -> bool:
        return self.submission is not None and not self.faults


def read_problems(path: Path, limit: int | None = None) -> pl.DataFrame:
    """id (String), problem (String) and, when present, answer (Int64); a clear error otherwise."""
    if not path.is_file():
        raise ProblemFileError(f"problem file not found: {path}")
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.PolarsError, UnicodeDecodeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProblemFileError(f"problem file {path} is not a readable CSV: {reason}") from None
    missing = {"id", "problem"} - set(frame.columns)
    if missing:
        raise ProblemFileError(
            f"problem file {path} lacks column(s) {sorted(missing)} (has {frame.columns})"
        )
    if frame.height == 0:
        raise ProblemFileError(f"problem file {path} has no problems (a header alone)")
    if problems := _id_problems(frame["id"]):
        raise ProblemFileError(f"problem file {path}: ids must be present and unique: {problems}")
    if "answer" in frame.columns:
        answers = [None if a is None else normalize_integer(a) for a in frame["answer"].to_list()]
        frame = frame.with_columns(pl.Series("answer", answers, dtype=pl.Int64))
    frame = frame.with_columns(pl.col("problem").fill_null(""))
    return frame.head(limit) if limit is not None else frame


def _id_problems(ids: pl.Series, shown: int = 5) -> str:
    """Which rows (1 = the first after the header) have no id, and which ids repeat where."""
    rows = pl.DataFrame({"id": ids, "row": range(1, ids.len() + 1)})
    missing = rows.filter(pl.col("id").is_null())["row"].to_list()
    repeated = (
        rows.drop_nulls("id")
        .group_by("id", maintain_order=True)
        .agg(pl.col("row"))
        .filter(pl.col("row").list.len() > 1)
    )
    found = []
    if missing:
        found.append(
            f"no id on row(s) {missing[:shown]}" + (" ..." if len(missing) > shown else "")
        )
    for problem_id, where in repeated.head(shown).iter_rows():
        found.append(f"id {problem_id!r} on rows {where}")
    if repeated.height > shown:
        found.append(f"... {repeated.height - shown} more repeated ids")
    return "; ".join(found)


def usable_out_dir(configured: Path, kaggle_root: Path = KAGGLE_ROOT) -> Path:
    """The configured output folder, unless it is under a /kaggle this machine does not have.

    Outside Kaggle the production config's /kaggle/working would be created
    from nothing (as root: a stray tree at the top of the filesystem).
    """
    on_kaggle_only = configured.is_absolute() and configured.is_relative_to(kaggle_root)
    if on_kaggle_only and not kaggle_root.is_dir():
        fallback = LOCAL_OUT_DIR.resolve()
        log.warning(
            "output: %s is on Kaggle only (no %s here); writing to %s instead (--out DIR)",
            configured,
            kaggle_root,
            fallback,
        )
        return fallback
    return configured


def run_locally(
    harness: Harness,
    config: Config,
    test_csv: Path,
    out_dir: Path,
    evaluation_root: Path | None,
    *,
    started_at: float | None = None,
    seed: int = 0,
    expected: Mapping[str, int | None] | None = None,
    extra_lines: Callable[[Harness], Sequence[str]] | None = None,
) -> LocalRun:
    """Serve `test_csv` to `harness` through the gateway; the harness is closed on return.

    `evaluation_root` holds the real `kaggle_evaluation` (None: the built-in
    replay). A gateway failure is logged and reported, and what was solved is
    still written out.
    """
    from submission import gateway, kaggle

    began = time.monotonic()
    submission: Path | None = None
    interrupted = False
    kaggle.configure(harness, config, started_at=started_at)
    try:
        if evaluation_root is not None:
            submission = kaggle.run_real_local_gateway(evaluation_root, config, test_csv, out_dir)
        else:
            submission = gateway.run_builtin_gateway(
                kaggle.predict, test_csv, config.profile, out_dir, seed=seed
            )
        faults = gateway.check_submission(submission, test_csv, config.profile)
    except KeyboardInterrupt:  # Ctrl-C: stop, and keep what finished
        log.warning("interrupted: stopping, and writing what finished")
        interrupted, faults = True, ["interrupted before the last problem"]
    except Exception as exc:  # the gateway failed the run: say why, keep what was solved
        log.exception("the gateway failed")
        submission, faults = None, [f"the gateway failed: {type(exc).__name__}: {exc}"]
    finally:
        kaggle.configure(None)
        harness.close()
    for fault in faults:
        log.error("submission: %s", fault)
    if expected:
        harness.core.grade(dict(expected))
    lines = list(extra_lines(harness)) if extra_lines is not None else []
    written = harness.write_outputs(out_dir, lines)
    if interrupted:
        written["partial submission"] = write_partial_submission(harness, out_dir)
    run = LocalRun(submission, faults, written, time.monotonic() - began, lines, interrupted)
    log_summary(harness, run)
    return run


def write_partial_submission(harness: Harness, out_dir: Path) -> Path:
    """The answers of the problems that finished, as the gateway would have written them."""
    from submission.report import atomic_path

    rows = [(s.problem_id, s.answer) for s in harness.core.history]
    frame = pl.DataFrame(rows, schema={"id": pl.String, "answer": pl.Int64}, orient="row")
    path = out_dir / PARTIAL_SUBMISSION
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)
    return path


def log_summary(harness: Harness, run: LocalRun) -> None:
    """The run's last lines: rows, fallbacks with their reasons, accuracy when known, time."""
    from submission.report import attempts_frame, fallback_reasons, problems_frame, summarize

    fallbacks = fallback_reasons(harness.core.history, harness.core.fallbacks)
    s = summarize(attempts_frame(harness.results), problems_frame(harness.core.history), fallbacks)
    rows = pl.read_parquet(run.submission).height if run.submission is not None else 0
    accuracy = f", {s['correct']}/{s['graded']} correct" if s["graded"] else ""
    log.info(
        "summary: %d rows in %s, %d problems%s, %d fallback answers, %.1f s",
        rows,
        run.submission or "no submission",
        s["problems"],
        accuracy,
        s["fallbacks"],
        run.seconds,
    )
    for problem_id, why in sorted(fallbacks.items()):
        log.warning("summary: %s answered with the fallback: %s", problem_id, why)

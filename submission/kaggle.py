"""The competition's side of the harness: `predict()` and the `kaggle_evaluation` glue.

The gateway calls a plain module-level function named `predict` (bound methods
and lambdas are rejected; it is looked up by `__name__`) from its own gRPC
worker thread, one problem at a time, with one-row `polars.Series` per CSV
column. So `predict` reaches the run through ONE module-level holder,
`_serving`, set only by `configure()`; nothing else here is mutable.

`predict` never raises and always returns one row: the served id, unchanged,
and an Int64 answer in the profile's range (the fallback answer on any
failure: engine, sandbox, timeout, bad input). It never waits past the
per-call limit (AIMO-2: 30 min) or the end of the run's global budget.

`kaggle_evaluation` ships with the competition data, not on PyPI: it is
found in a `--data-dir`, `$AIMO_KAGGLE_EVALUATION_DIR`, or the profile's
competition folder, and imported from there (see docs/kaggle.md).
"""

from __future__ import annotations

import importlib
import logging
import numbers
import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import chdir
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from submission.config import Config, ProfileConfig

log = logging.getLogger(__name__)

ENV_KAGGLE_EVALUATION_DIR = "AIMO_KAGGLE_EVALUATION_DIR"
ENV_RERUN = "KAGGLE_IS_COMPETITION_RERUN"


class SolvesProblems(Protocol):
    """What predict needs from the run (submission.harness.Harness has it)."""

    def wait_ready(self, timeout_s: float | None = None) -> bool: ...

    def solve(self, problem_id: str, problem: str, timeout_s: float | None = None) -> int: ...

    def note_fallback(self, problem_id: str, reason: str) -> None: ...


@dataclass(frozen=True)
class Serving:
    """Everything predict() uses: the run, its config, and the run's clock."""

    harness: SolvesProblems
    config: Config
    # The run's start on `clock` (on Kaggle: the process start, so loading counts).
    started_at: float
    # The clock the run's global budget is measured on (the harness's: monotonic).
    clock: Callable[[], float] = field(default=time.monotonic)
    # Kept back from the per-call limit and the run's end: predict answers before either.
    return_margin_s: float = 15.0


_serving: Serving | None = None  # the one mutable global; set by configure() only


def configure(
    harness: SolvesProblems | None,
    config: Config | None = None,
    *,
    started_at: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    return_margin_s: float = 15.0,
) -> None:
    """Point predict() at a run; `configure(None)` detaches it.

    `started_at` is the run's start on `clock` (default: now); the kernel
    passes the process start so that time spent loading counts.
    """
    global _serving
    if harness is None:
        _serving = None
        return
    if config is None:
        raise ValueError("configure(harness, config): the config is required with a harness")
    start = clock() if started_at is None else started_at
    _serving = Serving(harness, config, start, clock, return_margin_s)


def predict(id_: pl.Series, problem: pl.Series, *extra_columns: Any) -> pl.DataFrame:
    """One problem in, one row out: (id as served, Int64 answer). Never raises.

    The gateway passes one Series per CSV column, so a test file with more
    columns than (id, problem) (e.g. reference.csv's answer) arrives in
    `extra_columns`, which are ignored.
    """
    serving = _serving
    served_id = _served_id(id_)
    fallback = _fallback_answer(serving)
    try:
        if serving is None:
            log.error("predict() called before configure(): answering the fallback %d", fallback)
            return _row(served_id, fallback)
        answer, why = _answer(serving, served_id, problem, fallback)
    except Exception as exc:  # predict must never raise: the gateway would fail the whole run
        log.exception(
            "predict(%s) failed; answering the fallback %d", _id_text(served_id), fallback
        )
        answer, why = fallback, f"predict raised {type(exc).__name__}: {exc}"
    if why is not None:
        _note_fallback(serving, _id_text(served_id), why)
    return _row(served_id, answer)


def _note_fallback(serving: Serving, problem_id: str, why: str) -> None:
    """Tell the run (for its report) that this problem got the fallback, and why."""
    log.warning("fallback %s: %s", problem_id, why)
    try:
        serving.harness.note_fallback(problem_id, why)
    except Exception:
        log.exception("%s: recording the fallback failed", problem_id)


def _answer(
    serving: Serving, served_id: pl.Series, problem: Any, fallback: int
) -> tuple[int, str | None]:
    """The answer, and why it is the fallback (None when the solver's own answer)."""
    problem_id = _id_text(served_id)
    text, why_not = _problem_text(problem, serving.config.solver.max_problem_chars)
    if text is None:
        log.warning("%s: %s; answering the fallback %d", problem_id, why_not, fallback)
        return fallback, why_not
    profile = serving.config.profile
    call_started = time.monotonic()
    # Wait no longer than the gateway's per-call limit or the run's end, whichever comes first.
    run_left_s = profile.time_limit_s - (serving.clock() - serving.started_at)
    wait_s = max(0.0, min(profile.per_call_limit_s, run_left_s) - serving.return_margin_s)
    outcome: list[int] = []
    failure: list[str] = []
    worker = threading.Thread(
        target=_solve_into,
        args=(serving.harness, problem_id, text, wait_s, outcome, failure),
        name=f"predict-{problem_id}",
        daemon=True,
    )
    worker.start()
    worker.join(wait_s)
    seconds = time.monotonic() - call_started
    if not outcome:
        why = failure[0] if failure else f"no answer within {wait_s:.1f} s"
        log.error(
            "%s: no answer after %.1f s (limit %.1f s: %s); answering the fallback %d",
            problem_id,
            seconds,
            wait_s,
            why,
            fallback,
        )
        return fallback, why
    answer = outcome[0]
    if isinstance(answer, bool) or not isinstance(answer, numbers.Integral):
        log.error(
            "%s: solver returned %r, not an integer; fallback %d", problem_id, answer, fallback
        )
        return fallback, f"solver returned {answer!r}, not an integer"
    if not profile.answer_min <= int(answer) <= profile.answer_max:
        log.error(
            "%s: answer %d outside [%d, %d]; fallback %d",
            problem_id,
            answer,
            profile.answer_min,
            profile.answer_max,
            fallback,
        )
        return fallback, f"answer {answer} outside [{profile.answer_min}, {profile.answer_max}]"
    log.debug("%s: answer %d in %.1f s", problem_id, answer, seconds)
    return int(answer), None


def _solve_into(
    harness: SolvesProblems,
    problem_id: str,
    text: str,
    wait_s: float,
    outcome: list[int],
    failure: list[str],
) -> None:
    """Runs in a worker thread so that a hung solver cannot hold predict past its limit."""
    try:
        started = time.monotonic()
        if not harness.wait_ready(wait_s):
            failure.append(f"the engine is still loading after {wait_s:.0f} s")
            log.error("%s: %s", problem_id, failure[0])
            return
        left_s = wait_s - (time.monotonic() - started)
        outcome.append(harness.solve(problem_id, text, timeout_s=max(0.0, left_s)))
    except Exception as exc:  # the engine failed to load, or the solver raised
        failure.append(f"{type(exc).__name__}: {exc}")
        log.error("%s: no answer: %s", problem_id, failure[0])


def _served_id(id_: Any) -> pl.Series:
    """The id column to answer with: the served Series itself (AIMO-2 checks it is equal)."""
    if isinstance(id_, pl.Series):
        if id_.len() != 1:
            log.error("id has %d rows, expected 1", id_.len())
        return id_.head(1).rename("id") if id_.len() else pl.Series("id", [""])
    log.error("id is a %s, not a polars Series", type(id_).__name__)
    return pl.Series("id", ["" if id_ is None else str(id_)])


def _id_text(served_id: pl.Series) -> str:
    return str(served_id[0])


def _problem_text(problem: Any, max_chars: int) -> tuple[str | None, str]:
    """The problem as text, or None and why it cannot be attempted."""
    value = problem
    if isinstance(problem, pl.Series):
        if problem.len() != 1:
            return None, f"problem has {problem.len()} rows, expected 1"
        value = problem[0]
    if value is None:
        return None, "problem is null"
    if not isinstance(value, str):
        log.warning("problem is a %s, not text; using its string form", type(value).__name__)
        value = str(value)
    if not value.strip():
        return None, "problem is empty"
    if len(value) > max_chars:
        return None, f"problem has {len(value)} characters (limit {max_chars})"
    return value, ""


def _fallback_answer(serving: Serving | None) -> int:
    """The configured fallback, forced into the profile's range."""
    if serving is None:
        return ProfileConfig().answer_min
    profile = serving.config.profile
    return min(max(serving.config.solver.fallback_answer, profile.answer_min), profile.answer_max)


def _row(served_id: pl.Series, answer: int) -> pl.DataFrame:
    return pl.DataFrame([served_id, pl.Series("answer", [answer], dtype=pl.Int64)])


# --- kaggle_evaluation: finding it, loading the profile's server, running it ---------------


def find_kaggle_evaluation(
    data_dir: Path | None, profile: ProfileConfig | None = None
) -> Path | None:
    """The folder holding a `kaggle_evaluation` package with the profile's server, or None.

    Looks, in order, in `data_dir`, `$AIMO_KAGGLE_EVALUATION_DIR`, and the
    profile's competition folder, and logs every place it looked.
    """
    profile = profile or ProfileConfig()
    candidates: list[tuple[str, Path]] = []
    if data_dir is not None:
        candidates.append(("--data-dir", Path(data_dir)))
    if env_dir := os.environ.get(ENV_KAGGLE_EVALUATION_DIR):
        candidates.append((f"${ENV_KAGGLE_EVALUATION_DIR}", Path(env_dir)))
    else:
        log.info("kaggle_evaluation: $%s is not set", ENV_KAGGLE_EVALUATION_DIR)
    candidates.append(("profile competition_dir", Path(profile.competition_dir)))
    server_file = profile.gateway_module.rsplit(".", 1)[-1] + ".py"
    for where, candidate in candidates:
        # Accept the folder holding the package, or the package folder itself.
        root = candidate.parent if candidate.name == "kaggle_evaluation" else candidate
        package = root / "kaggle_evaluation"
        if not (package / "__init__.py").is_file():
            log.info("kaggle_evaluation: not in %s (%s)", package, where)
        elif not (package / server_file).is_file():
            log.info("kaggle_evaluation: %s has no %s (%s)", package, server_file, where)
        else:
            log.info("kaggle_evaluation: found %s (%s)", package, where)
            return root
    return None


def load_inference_server(
    root: Path, profile: ProfileConfig
) -> Callable[[Callable[..., Any]], Any]:
    """The profile's inference-server class, imported from the `kaggle_evaluation` under `root`."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module(profile.gateway_module)
    return getattr(module, profile.gateway_class)


def run_real_local_gateway(root: Path, config: Config, test_csv: Path, out_dir: Path) -> Path:
    """Run the real `run_local_gateway` on `test_csv`; it writes submission.parquet in out_dir."""
    server = load_inference_server(root, config.profile)(predict)
    test_path = str(Path(test_csv).resolve())  # before chdir: a relative path would break
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("running the real %s on %s", config.profile.gateway_class, test_path)
    with chdir(out_dir):  # the gateway writes submission.parquet in the working directory
        server.run_local_gateway((test_path,))
    return out_dir / "submission.parquet"


def serve_competition(root: Path, profile: ProfileConfig) -> None:
    """Serve the hidden test set (a competition rerun); blocks until the gateway is done."""
    server = load_inference_server(root, profile)(predict)
    log.info("serving %s.%s", profile.gateway_module, profile.gateway_class)
    server.serve()


def is_competition_rerun() -> bool:
    return os.environ.get(ENV_RERUN) is not None

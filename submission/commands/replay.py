"""`python -m submission replay`: a whole run through the competition's calling convention.

By default: the embedded GSM8K problems, answered by the replay engine from the
embedded ToRA transcripts, through the built-in gateway replay (one-row polars
Series per call, shuffled order, `submission.parquet` written as the gateway
writes it). With `--data-dir` holding the competition's `kaggle_evaluation`,
the real local gateway is used instead. Outputs go to `--out`: the submission,
the attempt log, the problem table, the generations and a report.

Exit codes (local_run.py): 0 every problem was served and at least one was
answered by the engine; 1 the run failed, or every answer is a fallback (with
each reason); 2 bad input (config, problem file, `--limit`, an `--out` another
run is writing to); 3 the engine failed to load, as the kernel's interactive
run; 130 Ctrl-C, after writing what finished (and saying where).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import polars as pl

from submission.answer import normalize_integer
from submission.config import PACKAGE_DATA, Config, ConfigError, add_config_arguments, load_config
from submission.local_run import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_READY,
    LocalRun,
    OutDirBusy,
    ProblemFileError,
    claim_out_dir,
    read_problems,
    run_locally,
    usable_out_dir,
)

log = logging.getLogger(__name__)

DEFAULT_PROBLEMS = PACKAGE_DATA / "gsm8k_first250.csv"
REPLAY_DEFAULTS = PACKAGE_DATA / "replay_gsm8k.toml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--problems",
        type=Path,
        default=DEFAULT_PROBLEMS,
        help="CSV with id,problem[,answer] (default: the embedded 250 GSM8K problems)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="competition data folder; its kaggle_evaluation (if any) serves the problems",
    )
    parser.add_argument(
        "--limit", type=_positive, default=None, help="only the first N problems (N >= 1)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: output.out_dir)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the gateway's shuffle")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def replay_config(args: argparse.Namespace) -> Config:
    """The embedded replay defaults, unless a config file is given; then the --set overrides."""
    toml = args.config_file if args.config_file is not None else REPLAY_DEFAULTS
    return load_config(args.profile, toml, args.overrides)


def recorded_accuracy_lines(engine: object, problems: pl.DataFrame) -> list[str]:
    """Accuracy of each transcript file on these problems, as its authors recorded it."""
    recordings_for = getattr(engine, "recordings_for", None)
    if recordings_for is None or "answer" not in problems.columns:
        return []
    correct: dict[str, int] = {}
    seen: dict[str, int] = {}
    for problem, expected in problems.select("problem", "answer").iter_rows():
        for recording in recordings_for(problem):
            seen[recording.source] = seen.get(recording.source, 0) + 1
            hit = expected is not None and normalize_integer(recording.predicted) == expected
            correct[recording.source] = correct.get(recording.source, 0) + int(hit)
    return [
        f"Recorded accuracy of `{source}`: {correct[source]}/{n} "
        f"({100 * correct[source] / n:.1f} %)"
        for source, n in sorted(seen.items())
    ]


def run(args: argparse.Namespace) -> int:
    try:
        config = replay_config(args)
        problems = read_problems(args.problems, args.limit)
    except (ConfigError, ProblemFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out_dir = usable_out_dir(args.out or Path(config.output.out_dir))
    try:
        with claim_out_dir(out_dir):
            return _replay(args, config, problems, out_dir)
    except OutDirBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # before the first problem: nothing to keep
        print("interrupted before any problem was served", file=sys.stderr)
        return EXIT_INTERRUPTED


def _replay(args: argparse.Namespace, config: Config, problems: pl.DataFrame, out_dir: Path) -> int:
    from submission import kaggle
    from submission.harness import Harness

    expected = (
        dict(zip(problems["id"], problems["answer"], strict=True))
        if "answer" in problems.columns
        else {}
    )
    with _progress(problems.height, enabled=config.output.progress) as advance:
        harness = Harness.start(config, problems_total=problems.height, on_problem=advance)
        try:
            harness.wait_ready()  # as the kernel's interactive run: no gateway clock yet
        except KeyboardInterrupt:
            harness.close()
            raise
        except Exception as exc:
            harness.close()
            print(f"error: the {config.engine.kind} engine failed to load: {exc}", file=sys.stderr)
            return EXIT_NOT_READY
        evaluation = (
            kaggle.find_kaggle_evaluation(args.data_dir, config.profile) if args.data_dir else None
        )
        outcome = run_locally(
            harness,
            config,
            _write_test_csv(problems, out_dir),
            out_dir,
            evaluation,
            seed=args.seed,
            expected=expected,
            extra_lines=lambda h: recorded_accuracy_lines(h.core.engine, problems),
        )
    if outcome.interrupted:
        done = len(harness.core.history)
        print(
            f"interrupted after {done}/{problems.height} problems; what finished:", file=sys.stderr
        )
        for name, path in outcome.written.items():
            print(f"  {name}: {path}", file=sys.stderr)
        return EXIT_INTERRUPTED
    everything_fell_back = _print_summary(harness, outcome)
    if everything_fell_back:
        print(
            "error: every answer is a fallback (the reasons are above): nothing was solved",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0 if outcome.ok else EXIT_FAILED


def _write_test_csv(problems: pl.DataFrame, out_dir: Path) -> Path:
    """The gateway reads a test.csv (id, problem) as on Kaggle: answers stay with us."""
    from submission.report import atomic_path

    path = out_dir / "test.csv"
    with atomic_path(path) as tmp:
        problems.select("id", "problem").write_csv(tmp)
    return path


class _progress:
    """A rich progress bar advanced once per solved problem (or nothing when disabled).

    While it is shown, log records go through its console so they print above the bar.
    """

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self._progress = None
        self._saved_handlers: list[logging.Handler] = []

    def __enter__(self):  # type: ignore[no-untyped-def]
        if not self.enabled:
            return lambda result: None
        from rich.logging import RichHandler
        from rich.progress import Progress

        self._progress = Progress(transient=True)
        root = logging.getLogger()
        self._saved_handlers = root.handlers[:]
        root.handlers = [RichHandler(console=self._progress.console, show_path=False)]
        self._progress.start()
        task = self._progress.add_task("solving", total=self.total)
        return lambda result: self._progress.advance(task)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            logging.getLogger().handlers = self._saved_handlers


def _print_summary(harness: object, outcome: LocalRun) -> bool:
    """The run's table; True when every problem was answered with the fallback."""
    from rich.console import Console
    from rich.table import Table

    from submission.report import attempts_frame, fallback_reasons, problems_frame, summarize

    core = harness.core  # type: ignore[attr-defined]
    fallbacks = fallback_reasons(core.history, core.fallbacks)
    s = summarize(attempts_frame(core.results), problems_frame(core.history), fallbacks)
    table = Table(title="replay", show_header=False)
    if s["graded"]:
        table.add_row(
            "accuracy", f"{s['correct']}/{s['graded']} ({100 * s['correct'] / s['graded']:.1f} %)"
        )
    for line in outcome.notes:
        table.add_row("", line.replace("`", ""))
    table.add_row("problems", str(s["problems"]))
    table.add_row("fallback answers", str(s["fallbacks"]))
    table.add_row("wall time", f"{outcome.seconds:.1f} s")
    table.add_row("attempts / code calls", f"{s['attempts']} / {s['code_calls']}")
    kinds = ", ".join(f"{k}: {v}" for k, v in s["mismatch_kinds"].items()) or "none"
    table.add_row("sandbox output != recorded", f"{s['output_mismatches']} ({kinds})")
    table.add_row("submission", str(outcome.submission or "none: " + "; ".join(outcome.faults)))
    for name, path in outcome.written.items():
        table.add_row(name, str(path))
    Console().print(table)
    return s["problems"] > 0 and s["fallbacks"] >= s["problems"]

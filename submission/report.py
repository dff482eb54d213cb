"""What a run leaves behind: attempt log, problem table, generations, a Markdown report and a plot.

Every file is written to a temporary name and renamed into place, so an
interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from submission.records import ProblemSummary
from submission.solver import ProblemResult

ATTEMPT_SCHEMA: dict[str, Any] = {
    "problem_id": pl.String,
    "attempt_num": pl.Int64,
    "seed": pl.Int64,
    "answer": pl.Int64,
    "is_none": pl.Boolean,
    "is_correct": pl.Boolean,
    "tokens": pl.Int64,
    "time_s": pl.Float64,
    "code_calls": pl.Int64,
    "errors": pl.Int64,
    "finish_reason": pl.String,
    "entropy": pl.Float64,
    "entropy_tokens": pl.Int64,
    "output_mismatches": pl.Int64,
    "mismatch_kinds": pl.String,
    "error_message": pl.String,
    "sampling": pl.String,
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "problem_id": pl.String,
    "answer": pl.Int64,
    "is_correct": pl.Boolean,
    "seconds": pl.Float64,
    "budget_s": pl.Float64,
    "attempts": pl.Int64,
    "answered": pl.Int64,
    "top_votes": pl.Int64,
    "tokens": pl.Int64,
    "stop_reason": pl.String,
}


@contextmanager
def atomic_path(path: Path):  # type: ignore[no-untyped-def]
    """A temporary path beside `path` that replaces it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp's 0600 would hide the outputs from others
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_file_mode() -> int:
    """The mode a plain open() would give a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fallback_reasons(
    history: Sequence[ProblemSummary], noted: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Every problem answered with the fallback, and why: predict's own, then the solver's."""
    reasons = dict(noted or {})
    for summary in history:
        if summary.answered == 0:
            reasons.setdefault(summary.problem_id, summary.stop_reason)
    return reasons


def attempts_frame(results: Sequence[ProblemResult]) -> pl.DataFrame:
    rows = [attempt.row() for result in results for attempt in result.attempts]
    return pl.DataFrame(rows, schema=ATTEMPT_SCHEMA)


def problems_frame(history: Sequence[ProblemSummary]) -> pl.DataFrame:
    rows = [{name: getattr(s, name) for name in PROBLEM_SCHEMA} for s in history]
    return pl.DataFrame(rows, schema=PROBLEM_SCHEMA)


def write_run_outputs(
    results: Sequence[ProblemResult],
    history: Sequence[ProblemSummary],
    out_dir: Path,
    write_report: bool = True,
    extra_lines: Sequence[str] = (),
    fallbacks: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """attempts.parquet, problems.parquet, generations.jsonl (+ report.md, report.png).

    `fallbacks`: problems answered with the fallback outside the solver (predict's checks).
    """
    attempts = attempts_frame(results)
    problems = problems_frame(history)
    written = {
        "attempts": _write(out_dir / "attempts.parquet", attempts.write_parquet),
        "problems": _write(out_dir / "problems.parquet", problems.write_parquet),
        "generations": _write(
            out_dir / "generations.jsonl", lambda p: _write_generations(results, p)
        ),
    }
    if write_report:
        written["plot"] = _write(out_dir / "report.png", lambda p: plot_run(problems, p))
        markdown = render_report(
            attempts, problems, extra_lines, fallback_reasons(history, fallbacks)
        )
        written["report"] = _write(
            out_dir / "report.md", lambda p: p.write_text(markdown, encoding="utf-8")
        )
    return written


def _write(path: Path, writer: Callable[[Path], object]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return path


def _write_generations(results: Sequence[ProblemResult], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for result in results:
            for attempt in result.attempts:
                record = {
                    "problem_id": attempt.problem_id,
                    "attempt_num": attempt.attempt_num,
                    "text": attempt.text,
                }
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def summarize(
    attempts: pl.DataFrame, problems: pl.DataFrame, fallbacks: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The run's headline numbers (`fallbacks`: every fallback answer, from fallback_reasons)."""
    known = problems.filter(pl.col("is_correct").is_not_null())
    mismatch_kinds = (
        attempts.filter(pl.col("mismatch_kinds") != "")
        .select(pl.col("mismatch_kinds").str.split(",").explode().alias("kind"))
        .group_by("kind")
        .len()
        .sort("kind")
    )
    if fallbacks is None:
        fallbacks = {
            pid: reason
            for pid, reason in problems.filter(pl.col("answered") == 0)
            .select("problem_id", "stop_reason")
            .iter_rows()
        }
    answered = set(problems["problem_id"]) | set(fallbacks)
    return {
        "problems": len(answered),
        "correct": int(known["is_correct"].sum()) if known.height else None,
        "graded": known.height,
        "seconds": float(problems["seconds"].sum()),
        "tokens": int(attempts["tokens"].sum()),
        "attempts": attempts.height,
        "code_calls": int(attempts["code_calls"].sum()),
        "code_errors": int(attempts["errors"].sum()),
        "output_mismatches": int(attempts["output_mismatches"].sum()),
        "mismatch_kinds": dict(zip(mismatch_kinds["kind"], mismatch_kinds["len"], strict=True)),
        "fallbacks": len(fallbacks),
        "engine_errors": dict(
            attempts.filter(pl.col("finish_reason") == "error")
            .group_by(pl.col("error_message").fill_null("(no message)"))
            .len()
            .sort("len", descending=True)
            .iter_rows()
        ),
    }


def render_report(
    attempts: pl.DataFrame,
    problems: pl.DataFrame,
    extra_lines: Sequence[str] = (),
    fallbacks: Mapping[str, str] | None = None,
) -> str:
    s = summarize(attempts, problems, fallbacks)
    accuracy = (
        f"{s['correct']}/{s['graded']} ({100 * s['correct'] / s['graded']:.1f} %)"
        if s["graded"]
        else "no answers known"
    )
    lines = [
        "# Run report",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| problems | {s['problems']} |",
        f"| accuracy | {accuracy} |",
        f"| time (s) | {s['seconds']:.1f} |",
        f"| attempts | {s['attempts']} |",
        f"| tokens | {s['tokens']} |",
        f"| code calls (errors) | {s['code_calls']} ({s['code_errors']}) |",
        f"| problems with no answer (fallback) | {s['fallbacks']} |",
        f"| attempts ended by an engine error | {sum(s['engine_errors'].values())} |",
        f"| code outputs differing from the recording | {s['output_mismatches']} |",
    ]
    for kind, count in s["mismatch_kinds"].items():
        lines.append(f"| - of kind {kind} | {count} |")
    if s["engine_errors"]:
        lines += ["", "## Engine errors", "", "| error | attempts |", "| --- | --- |"]
        lines += [f"| {_cell(error)} | {n} |" for error, n in s["engine_errors"].items()]
    if fallbacks:
        lines += ["", "## Fallback answers", "", "| problem | why |", "| --- | --- |"]
        lines += [f"| {pid} | {_cell(why)} |" for pid, why in sorted(fallbacks.items())]
    lines += [
        "",
        *extra_lines,
        "",
        "## Problems",
        "",
        "| problem | answer | correct | seconds | budget | attempts | answered | votes | "
        "tokens | stop |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in problems.iter_rows(named=True):
        correct = "" if row["is_correct"] is None else ("yes" if row["is_correct"] else "no")
        lines.append(
            f"| {row['problem_id']} | {row['answer']} | {correct} | {row['seconds']:.1f} | "
            f"{row['budget_s']:.0f} | {row['attempts']} | {row['answered']} | "
            f"{row['top_votes']} | {row['tokens']} | {row['stop_reason']} |"
        )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def plot_run(problems: pl.DataFrame, path: Path) -> None:
    """Time against budget and votes per problem, in the order solved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(problems.height))
    fig, (ax_time, ax_votes) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    colors = [
        "tab:green" if c else ("tab:red" if c is not None else "tab:gray")
        for c in problems["is_correct"].to_list()
    ]
    ax_time.bar(x, problems["seconds"].to_list(), color=colors, label="time used")
    ax_time.plot(x, problems["budget_s"].to_list(), "k.", markersize=3, label="budget")
    ax_time.set_ylabel("seconds")
    ax_time.set_yscale("symlog", linthresh=1.0)
    ax_time.legend(loc="upper right")
    ax_time.set_title("Time per problem (green: correct, red: wrong, grey: unknown)")
    ax_votes.bar(x, problems["attempts"].to_list(), color="lightgray", label="attempts")
    ax_votes.bar(x, problems["answered"].to_list(), color="tab:blue", label="answered")
    ax_votes.bar(x, problems["top_votes"].to_list(), color="tab:orange", label="votes for answer")
    ax_votes.set_ylabel("attempts")
    ax_votes.set_xlabel("problem (in the order solved)")
    ax_votes.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)

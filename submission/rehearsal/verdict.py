"""A rehearsed run's verdict: read from the kernel's log and its output, and printed as a table."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from submission.config import ProfileConfig
from submission.rehearsal.tree import Tree

SERVE_LIMIT_S = 15 * 60.0  # a rerun's server must listen within 15 minutes
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
FALLBACK_LINE = re.compile(r" fallback (\S+): (.*)$")
INSTALL_LINE = re.compile(r"install: offline wheels from .* installed in ([\d.]+) s")


@dataclass
class Verdict:
    """One rehearsed run, as the table shows it."""

    mode: str
    profile: str = ""
    passed: bool = False
    install_s: float | None = None
    serve_s: float | None = None
    first_answer_s: float | None = None
    rows: int = 0
    expected_rows: int = 0
    fallbacks: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    faults: list[str] = field(default_factory=list)
    log: str = ""  # the kernel's
    gateway_log: str = ""  # a rerun's
    exits: dict[str, int | None] = field(default_factory=dict)  # processes that ended themselves


def read_log(verdict: Verdict, log_file: Path, launched: float, serving: tuple[str, ...]) -> None:
    """Install time, time to serve, first answer and fallbacks, from the kernel's log."""
    text = log_file.read_text(errors="replace") if log_file.is_file() else ""
    verdict.log = str(log_file)
    for line in text.splitlines():
        stamp = LOG_TIME.match(line)
        at = _seconds_since(stamp.group(1), launched) if stamp else None
        if (found := INSTALL_LINE.search(line)) is not None:
            verdict.install_s = float(found.group(1))
        if verdict.serve_s is None and at is not None and any(m in line for m in serving):
            verdict.serve_s = at
        answered = " problem 1/" in line or FALLBACK_LINE.search(line)
        if verdict.first_answer_s is None and at is not None and answered:
            verdict.first_answer_s = at
        if (fallback := FALLBACK_LINE.search(line)) is not None:
            verdict.fallbacks.setdefault(fallback.group(1), fallback.group(2))
        if " ERROR " in line and "preflight FAILED" in line:
            verdict.faults.append(line.split(": ", 1)[-1])


def check_output(verdict: Verdict, submission: Path, tree: Tree, profile: ProfileConfig) -> None:
    import polars as pl

    from submission.gateway import check_submission

    if not submission.is_file():
        verdict.faults.append("no submission.parquet")
    else:
        verdict.rows = pl.read_parquet(submission).height
        verdict.faults += check_submission(submission, tree.competition / "test.csv", profile)
    verdict.passed = not verdict.faults and verdict.rows == verdict.expected_rows


def print_verdicts(verdicts: list[Verdict], engine_kind: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(v) for v in verdicts], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    table = Table(title=f"rehearsal, engine {engine_kind}")
    columns = ("profile", "run", "verdict", "install", "to serve()", "to 1st answer", "rows")
    for column in (*columns, "fallbacks", "wall"):
        table.add_column(column)
    for v in verdicts:
        table.add_row(
            v.profile,
            v.mode,
            "PASS" if v.passed else "FAIL",
            secs(v.install_s),
            secs(v.serve_s),
            secs(v.first_answer_s),
            f"{v.rows}/{v.expected_rows}",
            str(len(v.fallbacks)),
            secs(v.wall_s),
        )
    console = Console(width=120)
    console.print(table)
    for v in verdicts:
        name = f"{v.profile} {v.mode}"
        for problem_id, why in sorted(v.fallbacks.items()):
            console.print(f"{name}: fallback {problem_id}: {why}")
        for fault in v.faults:
            console.print(f"[red]{name}[/red]: {fault}")
        if not v.passed and Path(v.log).is_file():
            print(f"{name} log (last lines):\n" + _tail(Path(v.log), 30))
        console.print(
            f"{name} log: {v.log}" + (f", gateway: {v.gateway_log}" * bool(v.gateway_log))
        )


def _tail(path: Path, lines: int) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _seconds_since(stamp: str, launched: float) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() - launched

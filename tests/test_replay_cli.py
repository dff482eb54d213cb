"""`python -m submission replay` end to end: files, schemas, values, and bad input."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from submission.__main__ import main
from submission.commands.replay import DEFAULT_PROBLEMS, ProblemFileError, read_problems
from submission.engines.replay import EMBEDDED_TRANSCRIPTS
from submission.report import ATTEMPT_SCHEMA, PROBLEM_SCHEMA


@pytest.fixture(scope="module")
def replay20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("replay20")
    assert main(["replay", "--limit", "20", "--out", str(out)]) == 0
    return out


def recorded_predictions() -> dict[str, list[str]]:
    """problem id -> the answers the two recorded models gave."""
    preds: dict[str, list[str]] = {}
    for path in EMBEDDED_TRANSCRIPTS:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            preds.setdefault(f"gsm8k-{record['idx']:04d}", []).append(record["pred"][0])
    return preds


def test_submission_parquet_is_what_the_gateway_writes(replay20: Path) -> None:
    submission = pl.read_parquet(replay20 / "submission.parquet")
    assert submission.schema == pl.Schema({"id": pl.String, "answer": pl.Int64})
    expected_ids = pl.read_csv(DEFAULT_PROBLEMS, infer_schema=False)["id"].head(20).to_list()
    assert sorted(submission["id"].to_list()) == sorted(expected_ids)
    assert submission["answer"].is_between(0, 99_999).all()


def test_answers_come_from_the_recordings(replay20: Path) -> None:
    submission = pl.read_parquet(replay20 / "submission.parquet")
    preds = recorded_predictions()
    for problem_id, answer in submission.iter_rows():
        recorded = {p.replace(".0", "") for p in preds[problem_id]}
        assert str(answer) in recorded, (problem_id, answer, recorded)


def test_attempt_log_schema_and_values(replay20: Path) -> None:
    attempts = pl.read_parquet(replay20 / "attempts.parquet")
    assert attempts.schema == pl.Schema(ATTEMPT_SCHEMA)
    assert attempts.height == 40  # two recordings per problem
    assert set(attempts["finish_reason"]) <= {"boxed", "stop", "length", "max_code_calls"}
    assert (attempts["code_calls"] >= 1).sum() >= 38
    assert attempts["is_correct"].null_count() == 0  # the problem file has answers
    assert (attempts["is_none"] == attempts["answer"].is_null()).all()
    assert (attempts["tokens"] > 0).all()
    problems = pl.read_parquet(replay20 / "problems.parquet")
    assert problems.schema == pl.Schema(PROBLEM_SCHEMA)
    assert problems.height == 20
    assert (problems["seconds"] <= problems["budget_s"]).all()


def test_report_and_generations(replay20: Path) -> None:
    report = (replay20 / "report.md").read_text()
    assert "| accuracy |" in report and "Recorded accuracy of `tora70b_gsm8k_first250`" in report
    assert (replay20 / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (replay20 / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 40
    assert all("```output" in json.loads(line)["text"] for line in lines[:5])
    assert not list(replay20.glob(".*"))  # no temporary files left behind


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        (b"id,problem\na,caf\xe9 au lait?\n", "not a readable CSV: invalid utf-8"),
        (b"question,solution\nwhat,1\n", "lacks column"),
        (b"id,problem\na,1+1\na,2+2\n", "unique"),
        (b"", "readable CSV|lacks column"),
    ],
)
def test_bad_problem_files_are_one_line_errors(
    tmp_path: Path, content: bytes | None, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "problems.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ProblemFileError, match=message):
        read_problems(path)
    out = tmp_path / "out"
    assert main(["replay", "--problems", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not out.exists()  # nothing half-written


def test_bad_problems_inside_a_good_file_get_the_fallback(tmp_path: Path) -> None:
    record = json.loads(EMBEDDED_TRANSCRIPTS[0].read_text(encoding="utf-8").splitlines()[0])
    rows = [
        ["id", "problem", "answer"],
        ["ok", record["question"], record["gt"]],
        ["empty", "", "1"],
        ["blank", "   ", "1"],
        ["huge", "x" * 1_000_000, "1"],
        ["unknown", "What is 6 times 7 in base 5?", "132"],
    ]
    out = tmp_path / "out"
    assert (
        main(["replay", "--problems", str(write_csv(tmp_path / "p.csv", rows)), "--out", str(out)])
        == 0
    )
    submission = dict(pl.read_parquet(out / "submission.parquet").iter_rows())
    assert submission["ok"] == int(record["gt"])
    for bad in ("empty", "blank", "huge", "unknown"):
        assert submission[bad] == 0  # the documented fallback answer


# --- wrong input gets a clear answer; interruptions keep what finished (issue 21 items 6-8) ---


@pytest.mark.parametrize("limit", ["-1", "0", "two"])
def test_a_limit_below_one_is_refused(limit: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: --limit -1 ran 249 problems; --limit 0 ended in a GatewayError traceback."""
    with pytest.raises(SystemExit) as stopped:
        main(["replay", "--limit", limit])
    assert stopped.value.code == 2
    assert "--limit" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"id,problem\n", "has no problems (a header alone)"),
        (
            b"id,problem\na,1+1\nb,2+2\na,3+3\n,4+4\n",
            "ids must be present and unique: no id on row(s) [4]; id 'a' on rows [1, 3]",
        ),
    ],
)
def test_problem_file_errors_name_what_and_where(
    tmp_path: Path, content: bytes, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "problems.csv"
    path.write_bytes(content)
    assert main(["replay", "--problems", str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_an_engine_that_cannot_load_exits_3_as_the_kernel_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: every answer was a fallback and replay exited 0 (the kernel: 3)."""
    code = main(
        [
            *("replay", "--limit", "2", "--out", str(tmp_path / "out")),
            *("--set", "engine.kind=sim", "--set", "engine.sim.attempts_csv=/no/log.csv"),
        ]
    )
    assert code == 3
    assert "the sim engine failed to load" in capsys.readouterr().err


def test_a_users_own_problems_are_not_a_success_for_the_replay_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Before: exit 0, each problem's reason 'no attempt answered'."""
    rows = [["id", "problem"], ["mine", "What is 6 times 7 in base 5?"]]
    problems = write_csv(tmp_path / "mine.csv", rows)
    assert main(["replay", "--problems", str(problems), "--out", str(tmp_path / "out")]) == 1
    assert "every answer is a fallback" in capsys.readouterr().err
    assert (
        "no recorded generation for this problem: the replay engine knows only the embedded "
        "problems" in caplog.text
    )


def slow_replay(out: Path) -> subprocess.Popen[str]:
    """A replay of 6 problems slow enough (20 tokens/s) to be caught mid-run."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "submission", "replay", "--limit", "6", "--out", str(out)),
            *("--set", "engine.replay.tokens_per_s=60", "--set", "output.progress=true"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(process: subprocess.Popen[str], pattern: str, timeout_s: float = 120) -> str:
    seen = []
    deadline = time.monotonic() + timeout_s
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
        assert line or process.poll() is None, "".join(seen)
    raise AssertionError(f"no {pattern!r} within {timeout_s} s: {''.join(seen)[-2000:]}")


def test_ctrl_c_keeps_what_finished_and_a_second_run_into_the_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: Ctrl-C printed a raw KeyboardInterrupt traceback and kept nothing; two runs
    into one --out both exited 0, the last one winning."""
    out = tmp_path / "out"
    first = slow_replay(out)
    try:
        wait_for_line(first, r"problem 1/6 ")
        assert main(["replay", "--limit", "2", "--out", str(out)]) == 2
        assert "is in use by another run" in capsys.readouterr().err
        first.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert re.search(r"interrupted after \d/6 problems", err)
    partial = pl.read_parquet(out / "submission.partial.parquet")
    assert 1 <= partial.height < 6 and partial.schema["answer"] == pl.Int64
    assert not (out / "submission.parquet").exists()  # never mistaken for a whole run
    assert pl.read_parquet(out / "problems.parquet").height == partial.height
    assert str(out / "submission.partial.parquet") in err  # said where
    assert main(["replay", "--limit", "2", "--out", str(out)]) == 0  # the folder is free again

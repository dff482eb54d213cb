"""`python -m submission replay` end to end: files, schemas, values, and bad input."""

from __future__ import annotations

import csv
import json
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

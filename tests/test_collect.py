"""`python -m submission collect` end to end: the log it writes, resuming after SIGKILL,
chunks fanned out with one killed, engine errors, the wall cap, bad input, the hf engine."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from submission.__main__ import main
from submission.attempt_log import load_attempt_log, problems_from_log
from submission.attempt_store import ShardWriter, read_store
from submission.collect import COLLECT_SCHEMA, SHARDS
from submission.config import PACKAGE_DATA
from submission.report import ATTEMPT_SCHEMA
from tests.helpers import fast_sim

SIM_PROBLEMS = PACKAGE_DATA / "synthetic_problems.csv"
FAST_SIM = fast_sim(attempts=4, concurrency=8)
PROBLEMS = 6
# What makes two runs' rows the same row (times and concurrency differ from run to run).
SAME = ["problem_id", "attempt_num", "answer", "is_none", "is_correct", "tokens", "finish_reason"]


def problems_csv(folder: Path, count: int = PROBLEMS) -> Path:
    path = folder / "problems.csv"
    pl.read_csv(SIM_PROBLEMS).head(count).write_csv(path)
    return path


def row_set(out: Path) -> set[tuple[object, ...]]:
    return set(pl.read_parquet(out / "attempts.parquet").select(SAME).iter_rows())


def collect_process(out: Path, problems: Path, *extra: str) -> subprocess.Popen[bytes]:
    """The command as a user (or a scheduler) starts it, in its own process group; two
    attempts at a time, so a kill point in rows is reached well before the end."""
    argv = [sys.executable, "-m", "submission", "collect", "--problems", str(problems)]
    return subprocess.Popen(
        [*argv, "--out", str(out), *FAST_SIM, "--set", "collect.concurrency=2", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def committed(out: Path) -> int:
    """Rows committed so far (newline-terminated lines in every shard)."""
    return sum(p.read_bytes().count(b"\n") for p in (out / SHARDS).glob("*.jsonl"))


def kill_when(process: subprocess.Popen[bytes], out: Path, rows: int) -> None:
    """SIGKILL the process group once `rows` rows are committed (a scheduler's kill)."""
    deadline = time.monotonic() + 120
    while committed(out) < rows and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "it finished before the kill point"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted")
    out = folder / "out"
    argv = ["collect", "--problems", str(problems_csv(folder)), "--out", str(out), *FAST_SIM]
    assert main(argv) == 0
    return out


def test_collect_writes_the_log_simulate_reads(uninterrupted: Path) -> None:
    attempts = pl.read_parquet(uninterrupted / "attempts.parquet")
    assert attempts.schema == pl.Schema(ATTEMPT_SCHEMA | COLLECT_SCHEMA)
    assert attempts.height == PROBLEMS * 4
    assert attempts.select("problem_id", "attempt_num").is_duplicated().sum() == 0
    assert set(attempts["finish_reason"]) <= {"stop", "length"}
    # Every attempt ran to its own end: its logged tokens, or the token cap.
    assert ((attempts["finish_reason"] == "length") == (attempts["tokens"] == 8000)).all()
    assert (attempts["is_none"] == attempts["answer"].is_null()).all()
    graded = attempts.filter(pl.col("expected").is_not_null())
    assert (graded["is_correct"] == (graded["answer"] == graded["expected"]).fill_null(False)).all()
    assert attempts["is_correct"].sum() > 0  # the sim plays the logged problems' attempts
    assert attempts["concurrency"].is_between(1.0, 8.0).all()
    assert (attempts["engine_s"] <= attempts["time_s"] + 1e-6).all()
    generations = pl.read_parquet(uninterrupted / "generations.parquet")
    assert generations.height == attempts.height
    answered = generations.join(attempts, on=["problem_id", "attempt_num"]).filter(
        pl.col("answer").is_not_null()
    )
    assert all(f"\\boxed{{{a}}}" in t for t, a in answered.select("text", "answer").iter_rows())
    # simulate's reader takes it as it is.
    problems = problems_from_log(load_attempt_log(uninterrupted / "attempts.parquet"))
    assert len(problems) == PROBLEMS and all(len(p.attempts) == 4 for p in problems)
    table = pl.read_csv(uninterrupted / "passk.csv")
    assert table["problem_id"][-1] == "overall" and "maj@4" in table.columns
    assert (uninterrupted / "passk.png").stat().st_size > 0
    assert "pass@1" in (uninterrupted / "passk.md").read_text()


def test_killed_three_times_then_resumed_it_has_the_uninterrupted_rows(
    uninterrupted: Path, tmp_path: Path
) -> None:
    """SIGKILL at three random points (by rows committed), then the same command to the end:
    the same rows as the uninterrupted run, none twice."""
    out = tmp_path / "out"
    problems = problems_csv(tmp_path)
    total = PROBLEMS * 4
    points = sorted(random.Random(20).sample(range(1, total - 8), 3))
    for point in points:
        kill_when(collect_process(out, problems), out, point)
        assert point <= committed(out) < total
    final = collect_process(out, problems)
    assert final.wait(timeout=300) == 0, (
        final.stderr.read().decode()[-3000:] if final.stderr else ""
    )
    store = read_store(out / SHARDS)
    assert store.duplicates == 0 and len(store.rows) == total
    assert row_set(out) == row_set(uninterrupted)


def test_fanned_out_chunks_with_one_killed_merge_to_the_uninterrupted_rows(
    uninterrupted: Path, tmp_path: Path
) -> None:
    """Three chunk processes into one folder (a SLURM array's tasks); chunk 1 is killed
    mid-run and started again; the merge has the uninterrupted run's rows."""
    out = tmp_path / "out"
    problems = problems_csv(tmp_path)
    workers = {i: collect_process(out, problems, "--chunk", f"{i}/3") for i in range(3)}
    shard = out / SHARDS / "chunk-1-of-3.jsonl"
    deadline = time.monotonic() + 120
    while (
        not shard.exists() or shard.read_bytes().count(b"\n") < 2
    ) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers[1].poll() is None, "chunk 1 finished before it could be killed"
    os.killpg(workers[1].pid, signal.SIGKILL)
    workers[1].wait()
    assert shard.read_bytes().count(b"\n") < 8  # it was killed mid-run: 2 problems x 4
    for i in (0, 2):
        assert workers[i].wait(timeout=300) == 0
    rerun = collect_process(out, problems, "--chunk", "1/3")
    assert rerun.wait(timeout=300) == 0
    assert main(["collect", "--merge", "--out", str(out)]) == 0
    store = read_store(out / SHARDS)
    assert store.shards == 3 and store.duplicates == 0
    assert row_set(out) == row_set(uninterrupted)
    chunks = pl.read_parquet(out / "attempts.parquet").group_by("chunk").len()
    assert dict(chunks.iter_rows()) == {"0/3": 8, "1/3": 8, "2/3": 8}


def test_engine_errors_are_not_kept_and_the_next_run_retries_them(tmp_path: Path) -> None:
    out, problems = tmp_path / "out", problems_csv(tmp_path, 2)
    # Room for every attempt to reach its injected error before the token cap.
    argv = ["collect", "--problems", str(problems), "--out", str(out), *FAST_SIM]
    argv += ["--set", "generation.max_tokens=60000"]
    assert main([*argv, "--set", "engine.sim.error_rate=1.0"]) == 1
    assert read_store(out / SHARDS).rows == []
    assert main(argv) == 0
    assert len(read_store(out / SHARDS).rows) == 8


def test_the_wall_cap_ends_an_attempt_as_timed_out(tmp_path: Path) -> None:
    out, problems = tmp_path / "out", problems_csv(tmp_path, 1)
    slow = ["--set", "engine.sim.tokens_per_s=100", "--set", "collect.attempt_timeout_s=0.5"]
    argv = ["collect", "--problems", str(problems), "--out", str(out), *FAST_SIM, *slow]
    assert main(argv) == 0
    attempts = pl.read_parquet(out / "attempts.parquet")
    assert set(attempts["finish_reason"]) == {"timeout"} and attempts["is_none"].all()
    assert attempts["error_message"].str.contains("collect.attempt_timeout_s").all()
    assert attempts["time_s"].is_between(0.4, 5.0).all()


def test_bad_input_is_reported_and_nothing_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    problems = tmp_path / "p.csv"
    good = pl.read_csv(SIM_PROBLEMS).head(2)
    lines = [f'{r["id"]},"{r["problem"]}",{r["answer"]}' for r in good.iter_rows(named=True)]
    problems.write_text("id,problem,answer\n" + lines[0] + "\n,no id,1\n" + lines[1] + "\n")
    argv = ["collect", "--problems", str(problems), "--out", str(out), *FAST_SIM]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert f"{problems} line 3 skipped: empty id" in caplog.text
    assert len(read_store(out / SHARDS).rows) == 8
    # Another problem text under a collected id, other settings, a busy shard: refused.
    problems.write_text("id,problem\nsyn000,another text\n")
    assert main(argv) == 2
    assert "differs from the text their collected attempts were run on" in caplog.text
    problems.write_text("id,problem,answer\n" + lines[0] + "\n")
    caplog.clear()
    assert main([*argv, "--set", "generation.temperature=1.0"]) == 2
    assert "other settings (generation.temperature)" in caplog.text
    with ShardWriter(out / SHARDS / "chunk-0-of-1.jsonl", fsync=False):
        assert main(argv) == 2
    assert "another process is writing" in caplog.text
    assert main(["collect", "--problems", str(tmp_path / "none.csv"), "--out", str(out)]) == 2
    assert main(["collect", "--merge", "--out", str(tmp_path / "empty")]) == 2
    assert not (tmp_path / "empty").exists()
    hf = ["--set", "engine.kind=hf", "--set", f"engine.hf.model={tmp_path / 'no-model'}"]
    # An engine that cannot start: its reason, exit 2.
    assert main(["collect", "--problems", str(problems), "--out", str(tmp_path / "hf"), *hf]) == 2
    assert "hf: cannot load" in caplog.text
    assert len(read_store(out / SHARDS).rows) == 8  # what was committed is still there


def test_collect_with_the_hf_engine_on_a_tiny_model(tmp_path: Path, hf_tiny: Path) -> None:
    """A real model through the real engine: rows, tokens, the engine's identity, entropy."""
    out = tmp_path / "out"
    problems = tmp_path / "p.csv"
    pl.read_csv(PACKAGE_DATA / "aimo3_reference.csv").head(2).write_csv(problems)
    argv = [
        "collect",
        "--problems",
        str(problems),
        "--out",
        str(out),
        "--set",
        "engine.kind=hf",
        "--set",
        f"engine.hf.model={hf_tiny}",
        "--set",
        "generation.max_tokens=24",
        "--set",
        "collect.attempts=3",
        "--set",
        "collect.concurrency=6",
        "--set",
        "generation.top_logprobs=5",  # the hf engine reports each token's entropy over them
    ]
    assert main(argv) == 0
    attempts = pl.read_parquet(out / "attempts.parquet")
    assert attempts.height == 6 and (attempts["tokens"] > 0).all()
    # The mean per-token entropy over the top 5 (at most ln 5 nats).
    assert attempts["entropy"].is_between(0.0, 1.61).all()
    assert (attempts["tokens"] <= 24).all() and attempts["expected"].is_not_null().all()
    settings = json.loads((out / "collect.json").read_text())
    assert settings["engine"] == {"kind": "hf", "identity": str(hf_tiny)}
    texts = pl.read_parquet(out / "generations.parquet")["text"]
    assert len(set(texts)) > 1  # seeded per attempt: the attempts differ


@pytest.fixture(scope="module")
def hf_tiny(request: pytest.FixtureRequest) -> Path:
    from submission.standin import build_random_qwen2
    from tests.helpers import cached

    return cached(request, "qwen2-tiny-random-v2", build_random_qwen2)

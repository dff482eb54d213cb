"""The discrete-event simulator: its engine model, its runs, its command line."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from submission.attempt_log import (
    DEFAULT_ATTEMPTS,
    AttemptLogError,
    EngineCalibration,
    LoggedAttempt,
    LoggedProblem,
    calibrate_engine,
    engine_calibration,
    load_attempt_log,
    problems_from_log,
)
from submission.commands.simulate import add_arguments
from submission.commands.simulate import run as simulate_cli
from submission.config import load_config
from submission.policy import Policy, ProblemState, StopDecision
from submission.policy.anchors import FairShare, RunToEnd, anchor_policies
from submission.policy.defaults import default_policy
from submission.policy.selection import MajorityVote
from submission.simulator import (
    simulate_problem,
    simulate_run,
    simulation_config,
    sweep,
)

R1 = 100.0
A = 0.5
PLAIN = Policy("plain", 2, FairShare(), RunToEnd(), MajorityVote())


def test_two_attempts_share_the_rate_then_the_last_one_speeds_up() -> None:
    attempts = [LoggedAttempt(1, 100, True), LoggedAttempt(2, 200, True)]
    out = simulate_problem(PLAIN, attempts, 1000.0, R1, A, tick_s=1.0)
    shared = R1 / (1 + A)
    first = 100 / shared
    assert [a.answer for a in out.finished] == [1, 2]
    assert out.finished[0].time_s == pytest.approx(first)
    assert out.finished[1].time_s == pytest.approx(first + 100 / R1)
    assert out.tokens == 300 and out.stop_reason == "all finished"


def test_cut_off_attempts_run_to_the_deadline() -> None:
    out = simulate_problem(PLAIN, [LoggedAttempt(None, 50, False)] * 2, 30.0, R1, A, tick_s=1.0)
    assert out.finished == () and out.answer is None
    assert out.seconds == pytest.approx(30.0) and out.stop_reason == "deadline"


class CancelSecond:
    def decide(self, problem: ProblemState) -> StopDecision:
        return StopDecision(not problem.running, cancel=(1,))


def test_cancelling_frees_the_engine_for_the_rest() -> None:
    policy = Policy("c", 2, FairShare(), CancelSecond(), MajorityVote())
    attempts = [LoggedAttempt(1, 1000, True), LoggedAttempt(2, 1000, True)]
    out = simulate_problem(policy, attempts, 1000.0, R1, A, tick_s=1.0)
    # 1 s shared (until the first consult), the rest alone at R1.
    assert out.seconds == pytest.approx(1 + (1000 - R1 / (1 + A)) / R1)
    assert [a.attempt_num for a in out.finished] == [0]


def test_calibration_undoes_the_recorded_contention(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text(
        "problem_id,answer,is_none,is_correct,tokens,time_s\na,1,0,1,300,10\nb,,1,0,100,10\n"
    )
    frame = load_attempt_log(log)
    # No code_calls column: all time is decoding; least squares through the origin gives
    # (300*10 + 100*10) / (300**2 + 100**2) = 0.04 s per token at the recorded concurrency.
    fit = calibrate_engine(frame, concurrency=24, contention=0.087)
    assert fit.single_stream_rate == pytest.approx(25 * (1 + 0.087 * 23))
    assert fit.code_call_s == 0
    (a, b) = problems_from_log(frame)
    assert a.correct_answer == 1 and a.attempts[0].finishes
    assert b.correct_answer is None and not b.attempts[0].finishes and b.attempts[0].answer is None


def test_calibration_charges_code_calls_their_own_time(tmp_path: Path) -> None:
    # Exactly 50 tokens/s of decoding plus 3 s per call; an attempt without a time is left out.
    log = tmp_path / "log.csv"
    log.write_text(
        "problem_id,answer,is_none,tokens,code_calls,time_s\na,1,0,500,0,10\n"
        "a,2,0,500,10,40\na,3,0,1000,2,26\na,4,0,0,0,0\n"
    )
    fit = calibrate_engine(load_attempt_log(log), 1, 0.087)
    assert fit.single_stream_rate == pytest.approx(50)
    assert fit.code_call_s == pytest.approx(3)
    config = load_config(overrides=["engine.sim.code_call_s=0", "engine.sim.tokens_per_s=7"])
    assert engine_calibration(load_attempt_log(log), config.engine.sim) == EngineCalibration(7, 0)
    log.write_text("problem_id,answer,is_none,tokens,time_s\na,1,0,0,0\n")
    with pytest.raises(AttemptLogError, match="time_s > 0"):
        calibrate_engine(load_attempt_log(log), 1, 0.087)


def test_a_code_call_takes_its_stream_off_the_engine() -> None:
    # Attempt 0 calls code once halfway (after 50 tokens); for those 4 s attempt 1 decodes alone.
    attempts = [LoggedAttempt(1, 100, True, code_calls=1), LoggedAttempt(2, 1000, True)]
    out = simulate_problem(PLAIN, attempts, 1000.0, R1, A, tick_s=100.0, code_call_s=4.0)
    shared = R1 / (1 + A)
    halfway = 50 / shared
    after_call = halfway + 4.0
    first_done = after_call + 50 / shared
    second_left = 1000 - shared * (halfway + 50 / shared) - R1 * 4.0
    assert out.finished[0].time_s == pytest.approx(first_done)
    assert out.finished[1].time_s == pytest.approx(first_done + second_left / R1)


def test_bad_logs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(AttemptLogError, match="not found"):
        load_attempt_log(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("problem_id,answer\na,1\n")
    with pytest.raises(AttemptLogError, match="missing columns"):
        load_attempt_log(bad)


def test_runs_keep_the_budget_and_are_reproducible() -> None:
    problems = [
        LoggedProblem(
            f"p{i}", 1, (LoggedAttempt(1, 500 * (i + 1), True), LoggedAttempt(None, 9, False))
        )
        for i in range(6)
    ]
    config = simulation_config(load_config(), len(problems))
    for policy in (default_policy(config), *anchor_policies()):
        first = simulate_run(policy, problems, 600.0, R1, A, random.Random(1))
        again = simulate_run(policy, problems, 600.0, R1, A, random.Random(1))
        assert first == again
        # The AIMO anchors' fixed per-problem minimums (300 s, 350 s) overrun a 600 s budget.
        if policy.name in ("default", "plain"):
            assert not first.overrun and first.seconds <= 600.0


def test_default_beats_the_anchors_on_the_embedded_log() -> None:
    frame = load_attempt_log(DEFAULT_ATTEMPTS)
    problems = problems_from_log(frame)
    config = simulation_config(load_config(), len(problems))
    engine = engine_calibration(frame, config.engine.sim)
    policies = [default_policy(config), *anchor_policies()]
    rows = sweep(
        policies,
        problems,
        [0.25],
        seeds=6,
        single_stream_rate=engine.single_stream_rate,
        contention=config.engine.sim.contention,
        tick_s=5.0,
        code_call_s=engine.code_call_s,
    )
    ours, *anchors = rows
    assert ours.overruns == 0
    assert all(ours.score_mean > a.score_mean for a in anchors)


def test_cli_table_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = DEFAULT_ATTEMPTS
    args = _parse(
        [
            "--attempts",
            str(log),
            "--seeds",
            "2",
            "--fractions",
            "0.5",
            "--json",
            "--plot",
            str(tmp_path / "p.png"),
            "--tick",
            "5",
        ]
    )
    assert simulate_cli(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["policy"] for r in rows} == {
        "default",
        "aimo2-winner",
        "aimo3-top",
        "aimo3-runner-up",
        "plain",
    }
    assert all(r["fraction"] == 0.5 and r["runs"] == 2 for r in rows)
    assert (tmp_path / "p.png").stat().st_size > 0
    # Without --attempts: the embedded log.
    assert simulate_cli(_parse(["--seeds", "1", "--fractions", "1", "--json", "--plot", ""])) == 0
    assert {r["runs"] for r in json.loads(capsys.readouterr().out)} == {1}
    assert simulate_cli(_parse(["--attempts", str(tmp_path / "none.csv")])) == 2
    assert simulate_cli(_parse(["--attempts", str(log), "--seeds", "0"])) == 2
    assert simulate_cli(_parse(["--attempts", str(log), "--set", "budget.nope=1"])) == 2


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cross_validation_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """`--cross-validate` on the embedded log: every problem held out once, one row per
    fraction with the best anchor beside ours and each fold's chosen settings."""
    argv = ["--cross-validate", "--seeds", "1", "--fractions", "0.5", "--tick", "5", "--json"]
    assert simulate_cli(_parse(argv)) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["fraction"] == 0.5 and row["overruns"] == 0
    assert len(row["chosen"]) == 5  # one choice per fold
    assert row["anchor"] in {"aimo2-winner", "aimo3-top", "aimo3-runner-up", "plain"}
    assert row["lead"] == pytest.approx(row["score_mean"] - row["anchor_mean"])

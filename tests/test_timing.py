"""Offline timing runs of the real Harness and Solver on the sim engine, in virtual time.

A whole 50-problem, 5-hour AIMO-3 run takes a second or two: `looptime` fast-
forwards the event loop's clock whenever every task is waiting. The engine
plays the embedded synthetic attempt log (submission/data/synthetic_attempts.csv,
fitted to a real log of 25 hard problems; each of its 25 problems twice).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from submission.attempt_log import DEFAULT_ATTEMPTS
from submission.config import Config, load_config
from submission.engines.sim import SimEngine
from submission.harness import AsyncHarness
from submission.solver import ProblemResult

DEADLINE_SLACK_S = 1.0


@dataclass
class NoSandbox:
    """The sim engine never writes code; a call here is a bug."""

    async def arun(self, code: str, session: str, timeout: float) -> object:
        raise AssertionError(f"sim attempts run no code, got {code!r}")


@pytest.fixture
def log_path() -> Path:
    return DEFAULT_ATTEMPTS


def sim_config(log_path: Path, *overrides: str) -> Config:
    # 5 s chunks keep a 5-hour run to a few hundred thousand loop events.
    return load_config(
        overrides=[
            "engine.kind=sim",
            f"engine.sim.attempts_csv={log_path}",
            "engine.sim.chunk_s=5",
            *overrides,
        ]
    )


def problem_ids(log_path: Path) -> list[str]:
    return sorted(pl.read_csv(log_path)["problem_id"].unique().to_list())


async def whole_run(
    config: Config, order: list[str]
) -> tuple[list[ProblemResult], float, SimEngine]:
    """Solve `order` (log problem ids) as one competition run; return results and seconds used."""
    engine = SimEngine.from_config(config)
    loop = asyncio.get_running_loop()
    started = loop.time()
    harness = AsyncHarness(
        config, engine, NoSandbox(), started_at=started, problems_total=len(order)
    )
    harness.start_engine()
    results = []
    for n, pid in enumerate(order):
        results.append(await harness.solve(f"{pid}-{n}", SimEngine.problem_text(pid)))
        assert engine.active == 0, "streams left running after the problem ended"
        spent = sum(a.tokens for r in results for a in r.attempts)
        # Cancelled attempts stop costing: the engine decoded what the attempts were credited.
        assert engine.tokens_decoded == spent
    return results, loop.time() - started, engine


def check_run(config: Config, results: list[ProblemResult], seconds: float) -> None:
    limit = config.profile.solve_budget_s - config.budget.safety_margin_s
    assert seconds <= limit + DEADLINE_SLACK_S
    for r in results:
        assert r.seconds <= r.budget_s + DEADLINE_SLACK_S, r


def fifty(log_path: Path, seed: int) -> list[str]:
    ids = problem_ids(log_path) * 2
    random.Random(seed).shuffle(ids)
    return ids


@pytest.mark.looptime
@pytest.mark.parametrize("seed", range(3))
async def test_whole_aimo3_run_keeps_every_deadline(log_path: Path, seed: int) -> None:
    config = sim_config(log_path)
    results, seconds, _ = await whole_run(config, fifty(log_path, seed))
    assert len(results) == 50
    check_run(config, results, seconds)
    # A realistic log, the real policy: most problems are answered and many early.
    assert sum(not r.used_fallback for r in results) >= 40
    assert sum(r.seconds < 0.9 * r.budget_s for r in results) >= 25


@pytest.mark.looptime
@pytest.mark.parametrize("speed", [1 / 3, 3.0])
async def test_engine_slower_or_faster_than_expected(log_path: Path, speed: float) -> None:
    config = sim_config(log_path, f"engine.sim.speed={speed}")
    results, seconds, _ = await whole_run(config, fifty(log_path, 7))
    check_run(config, results, seconds)
    if speed > 1:
        # A fast engine settles votes long before the budget runs out.
        assert seconds < 0.5 * config.profile.solve_budget_s
    else:
        # A slow one narrows to fewer attempts so that some can still finish.
        assert any(a.finish_reason == "cancelled" for a in results[0].attempts)
        assert sum(not r.used_fallback for r in results) >= 15


@pytest.mark.looptime
async def test_every_attempt_failing_costs_little_and_answers_the_fallback(log_path: Path) -> None:
    config = sim_config(log_path, "engine.sim.error_rate=1.0")
    results, seconds, _ = await whole_run(config, fifty(log_path, 3))
    check_run(config, results, seconds)
    assert all(r.used_fallback and r.answer == config.solver.fallback_answer for r in results)
    # Each attempt ends in its injected error, or is cancelled when the problem stops (the
    # give-up rule can fire on a long attempt before its error comes).
    reasons = [a.finish_reason for r in results for a in r.attempts]
    assert set(reasons) <= {"error", "cancelled"}
    assert reasons.count("error") >= 0.95 * len(reasons)
    assert seconds < 0.5 * config.profile.solve_budget_s  # errors end attempts part-way


@pytest.mark.looptime
async def test_engine_ready_only_after_ten_minutes(log_path: Path) -> None:
    config = sim_config(log_path, "engine.sim.start_delay_s=600")
    results, seconds, _ = await whole_run(config, fifty(log_path, 5))
    check_run(config, results, seconds)  # the 10 minutes count against the same budget
    assert results[0].seconds > 0 and sum(not r.used_fallback for r in results) >= 40


@pytest.mark.looptime
async def test_hard_problems_last_still_get_time(log_path: Path) -> None:
    frame = pl.read_csv(log_path)
    ease = frame.group_by("problem_id").agg(pl.col("is_correct").mean().alias("ease"))
    hard_last = ease.sort("ease", descending=True)["problem_id"].to_list() * 2
    hard_last.sort(key=lambda pid: -ease.filter(pl.col("problem_id") == pid)["ease"][0])
    config = sim_config(log_path)
    results, seconds, _ = await whole_run(config, hard_last)
    check_run(config, results, seconds)
    # The bank from the easy half reaches the hard half: its problems get more than a
    # fair share of the whole budget.
    fair = (config.profile.solve_budget_s - config.budget.safety_margin_s) / len(hard_last)
    assert max(r.budget_s for r in results[-10:]) > fair


@pytest.mark.looptime
async def test_the_solver_scores_what_the_simulator_predicts(log_path: Path) -> None:
    """The same policy objects in the real Solver and in the simulator give the same picture."""
    from submission.attempt_log import (
        engine_calibration,
        load_attempt_log,
        problems_from_log,
    )
    from submission.policy.defaults import default_policy
    from submission.simulator import simulate_run

    speed = 0.25  # where policies differ most
    frame = load_attempt_log(log_path)
    problems = problems_from_log(frame)
    config = sim_config(
        log_path,
        f"engine.sim.speed={speed}",
        f"profile.problems={len(problems)}",
        f"profile.solve_budget_s={17_400 * len(problems) / 50}",
        "budget.safety_margin_s=300",
        "engine.sim.chunk_s=1",
    )
    engine = engine_calibration(frame, config.engine.sim)
    rate = engine.single_stream_rate * speed
    policy = default_policy(config)
    budget = config.profile.solve_budget_s
    predicted = [
        simulate_run(
            policy,
            problems,
            budget,
            rate,
            config.engine.sim.contention,
            random.Random(s),
            code_call_s=engine.code_call_s,
        ).score
        for s in range(8)
    ]
    order = [p.problem_id for p in problems]
    random.Random(11).shuffle(order)
    results, seconds, _ = await whole_run(config, order)
    check_run(config, results, seconds)
    truth = {p.problem_id: p.correct_answer for p in problems}
    score = sum(r.answer == truth[r.problem_id.rsplit("-", 1)[0]] for r in results)
    assert min(predicted) - 2 <= score <= max(predicted) + 2, (score, predicted)

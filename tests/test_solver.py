"""The TIR loop and the Solver on real recorded generations, with the real sandbox."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from submission.config import Config, load_config
from submission.engines.replay import EMBEDDED_TRANSCRIPTS, ReplayEngine
from submission.harness import AsyncHarness
from submission.policy import FinishedAttempt
from submission.policy.defaults import default_policy
from submission.policy.selection import MajorityVote
from submission.sandbox import Sandbox
from submission.solver import Solver

RECORDS = [json.loads(line) for line in EMBEDDED_TRANSCRIPTS[0].read_text().splitlines()]


def replay_config(*overrides: str) -> Config:
    return load_config(overrides=["prompt.family=tora", "solver.attempts=2", *overrides])


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox.from_config(load_config()) as sb:
        sb.run("1", session="warm-up", timeout=30)  # the fork server's preload, before any test
        sb.close_session("warm-up")
        yield sb


def make_solver(config: Config, sandbox: Sandbox) -> Solver:
    return Solver(ReplayEngine.from_config(config), sandbox, config, default_policy(config))


async def test_attempts_run_the_code_and_feed_back_our_output(sandbox: Sandbox) -> None:
    config = replay_config()
    # A roomy budget: with a tight one the first answer settles it and the other is cancelled.
    result = await make_solver(config, sandbox).solve("p0", RECORDS[0]["question"], budget_s=600)
    assert result.answer == 18 and not result.used_fallback
    assert len(result.attempts) == 2
    for attempt in result.attempts:
        assert attempt.code_calls == 1 and attempt.errors == 0
        assert attempt.finish_reason == "stop"  # generated to the end (tir.stop_at_boxed off)
        assert attempt.answer == 18
        assert "```output\n18\n```\n" in attempt.text  # our sandbox's output, fed back
        assert attempt.output_mismatches == 0
        assert attempt.tokens > 50


async def test_divergent_recorded_output_is_logged(sandbox: Sandbox, tmp_path: Path) -> None:
    """A recording whose printed output differs from what the code prints today."""
    record = dict(RECORDS[0])
    record["code"] = [record["code"][0].replace("```output\n18\n```", "```output\n17\n```")]
    path = tmp_path / "edited.jsonl"
    path.write_text(json.dumps(record) + "\n")
    config = replay_config(f"engine.replay.transcripts={path}", "solver.attempts=1")
    result = await make_solver(config, sandbox).solve("p0", record["question"], budget_s=60)
    (attempt,) = result.attempts
    assert attempt.output_mismatches == 1
    assert attempt.mismatch_kinds == ["semantic"]
    assert "```output\n18\n```" in attempt.text  # ours, never the recorded one


async def test_deadline_cancels_everything_and_falls_back(sandbox: Sandbox) -> None:
    config = replay_config("engine.replay.tokens_per_s=20", "engine.replay.chunk_tokens=1")
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await make_solver(config, sandbox).solve("p0", RECORDS[0]["question"], budget_s=0.5)
    elapsed = loop.time() - started
    assert elapsed < 1.5
    assert result.used_fallback and result.answer == config.solver.fallback_answer
    assert result.stop_reason == "no attempt answered"
    assert [a.finish_reason for a in result.attempts] == ["cancelled", "cancelled"]
    assert all(0 < a.tokens < 20 for a in result.attempts)


async def test_early_stop_cancels_the_stragglers(sandbox: Sandbox) -> None:
    # Four attempts over two recordings that agree (gsm8k idx 30: 205 and 308 tokens, both
    # 109); stop once two agree (patience off: time is ample, and patience would wait for an
    # uncatchable lead). At 400 tokens/s the short pair finishes ~0.25 s before the long
    # one, so the vote is settled while the long pair still runs, whatever the scheduling.
    config = replay_config(
        "solver.attempts=4",
        "early_stop.agree=2",
        "early_stop.patient_tokens=1000000000",
        "engine.replay.tokens_per_s=400",
    )
    record = RECORDS[30]
    result = await make_solver(config, sandbox).solve("p30", record["question"], budget_s=600)
    assert result.answer == int(record["pred"][0]) == 109
    assert result.stop_reason == "2 agree"
    reasons = sorted(a.finish_reason or "" for a in result.attempts)
    assert reasons == ["cancelled", "cancelled", "stop", "stop"]


async def test_limits_end_attempts(sandbox: Sandbox) -> None:
    question = RECORDS[0]["question"]
    no_code = replay_config("tir.max_code_calls=0", "solver.attempts=1")
    (attempt,) = (await make_solver(no_code, sandbox).solve("p0", question, 60)).attempts
    assert (attempt.finish_reason, attempt.code_calls) == ("max_code_calls", 0)
    short = replay_config("generation.max_tokens=7", "solver.attempts=1")
    (attempt,) = (await make_solver(short, sandbox).solve("p0", question, 60)).attempts
    assert (attempt.finish_reason, attempt.tokens) == ("length", 7)


@pytest.mark.parametrize(
    ("problem", "reason"),
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        (None, "not text"),
        ("x" * 1_000_000, "characters"),
        # No transcript: the engine's own reason (issue 21 item 7; before: "no attempt answered")
        (
            "What is the 12345th prime?",
            "engine error: no recorded generation for this problem: "
            "the replay engine knows only the embedded problems",
        ),
    ],
)
async def test_bad_problems_get_the_fallback_and_a_reason(
    sandbox: Sandbox, problem: object, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = replay_config()
    with caplog.at_level(logging.WARNING):
        result = await make_solver(config, sandbox).solve("bad", problem, budget_s=10)  # type: ignore[arg-type]
    assert result.used_fallback and result.answer == config.solver.fallback_answer
    assert reason in result.stop_reason
    assert any("fallback" in message for message in caplog.messages)


async def test_engine_errors_are_recorded(sandbox: Sandbox) -> None:
    config = replay_config()
    result = await make_solver(config, sandbox).solve("x", "What is the 12345th prime?", 10)
    assert all(a.finish_reason == "error" for a in result.attempts)
    assert all("no recorded generation" in (a.error_message or "") for a in result.attempts)


def test_majority_vote_tie_breaks_by_first_vote_then_value() -> None:
    def attempt(n: int, answer: int | None) -> FinishedAttempt:
        return FinishedAttempt(attempt_num=n, answer=answer, tokens=1, time_s=1.0)

    vote = MajorityVote()
    assert vote.select([attempt(0, 5), attempt(1, 7), attempt(2, 7)]) == 7
    assert vote.select([attempt(0, 5), attempt(1, 7), attempt(2, 7), attempt(3, 5)]) == 5
    assert vote.select([attempt(0, 9), attempt(1, 3)]) == 9
    assert vote.select([attempt(0, None), attempt(1, None)]) is None
    assert vote.select([]) is None


async def test_harness_budgets_and_records_history(sandbox: Sandbox) -> None:
    config = replay_config()
    engine = ReplayEngine.from_config(config)
    harness = AsyncHarness(config, engine, sandbox, problems_total=3)
    for record in RECORDS[:3]:
        await harness.solve(f"p{record['idx']}", record["question"])
    truth = {f"p{r['idx']}": int(r["gt"].replace(",", "")) for r in RECORDS[:3]}
    harness.grade(truth)
    assert [s.problem_id for s in harness.history] == ["p0", "p1", "p2"]
    assert [s.is_correct for s in harness.history] == [
        s.answer == truth[s.problem_id] for s in harness.history
    ]
    assert harness.history[0].is_correct and harness.history[1].is_correct
    # p2: the two recorded models disagree (70000 vs 10000); each attempt is graded on its own.
    p2 = harness.results[2].attempts
    assert sorted(a.is_correct for a in p2) == [False, True]
    first_budget = harness.history[0].budget_s
    assert 0 < first_budget <= config.budget.max_problem_s


class SlowToLoadReplay(ReplayEngine):
    """The replay engine behind a load that takes `load_s` (a TensorRT-LLM engine takes minutes)."""

    load_s = 2.0

    async def start(self) -> None:
        await asyncio.sleep(self.load_s)


async def test_a_slow_engine_load_never_blocks_past_the_run_budget(sandbox: Sandbox) -> None:
    config = replay_config("profile.solve_budget_s=0.5", "budget.safety_margin_s=0")
    engine = SlowToLoadReplay(**ReplayEngine.from_config(config).__dict__)
    harness = AsyncHarness(config, engine, sandbox, problems_total=2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await harness.solve("p0", RECORDS[0]["question"])
    assert loop.time() - started < 1.0
    assert result.used_fallback and result.stop_reason == "engine not ready"
    # The load went on in the background; once done, problems are solved again.
    harness.config.profile.solve_budget_s = 60.0
    result = await harness.solve("p1", RECORDS[1]["question"])
    assert result.answer == 3 and not result.used_fallback

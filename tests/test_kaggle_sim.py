"""A full simulated AIMO-3 run (50 problems, `sim` engine, virtual time) through predict().

The real blocking Harness runs on a `looptime` event loop, so its 5-hour
schedule passes in seconds; predict() is called by the built-in gateway replay
exactly as on Kaggle (a worker thread, one row at a time, shuffled), and
measures the run's budget on the harness loop's (virtual) clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import looptime
import polars as pl
import pytest

from submission import kaggle
from submission.attempt_log import DEFAULT_ATTEMPTS
from submission.config import load_config
from submission.engines.sim import SimEngine
from submission.gateway import check_submission, run_builtin_gateway
from submission.harness import Harness

PROBLEMS = 50

log = logging.getLogger(__name__)


class NoCodeSandbox:
    """The sim engine writes no code: any call is a bug."""

    async def arun(self, code: str, session: str, timeout: float) -> Any:
        raise AssertionError("the sim engine wrote code")


@pytest.fixture(autouse=True)
def detached() -> Iterator[None]:
    yield
    kaggle.configure(None)


@pytest.mark.parametrize("speed", [1.0, 1 / 3], ids=["as-logged", "3x-slower"])
def test_a_full_aimo3_run_finishes_under_the_limit(speed: float, tmp_path: Path) -> None:
    attempts_csv = DEFAULT_ATTEMPTS  # the embedded synthetic log
    config = load_config(
        "aimo3",
        overrides=[
            f"engine.sim.attempts_csv={attempts_csv}",
            "engine.sim.chunk_s=5",
            f"engine.sim.speed={speed}",
        ],
    )
    engine = SimEngine.from_config(config)
    # 50 problems: the log's 25, each twice under two ids (the private set is run twice too).
    log_ids = sorted(engine.problems)
    ids = [f"sim-{i:02d}" for i in range(PROBLEMS)]
    plays = {pid: log_ids[i % len(log_ids)] for i, pid in enumerate(ids)}
    test_csv = tmp_path / "test.csv"
    pl.DataFrame({"id": ids, "problem": [SimEngine.problem_text(plays[i]) for i in ids]}).write_csv(
        test_csv
    )
    harness = Harness.start(
        config,
        engine=engine,
        sandbox=NoCodeSandbox(),
        started_at=0.0,
        problems_total=PROBLEMS,
        loop=looptime.patch_event_loop(asyncio.new_event_loop()),  # virtual time
    )
    assert isinstance(harness.loop, looptime.LoopTimeEventLoop)
    kaggle.configure(harness, config, started_at=0.0, clock=harness.loop.time)
    try:
        path = run_builtin_gateway(kaggle.predict, test_csv, config.profile, tmp_path / "out")
        run_s = harness.loop.time()
    finally:
        harness.close()
    assert check_submission(path, test_csv, config.profile) == []
    assert run_s <= config.profile.solve_budget_s
    assert len(harness.results) == PROBLEMS
    # Answers came from the engine (not only fallbacks), and most are the log's right answers.
    truth = (
        pl.read_csv(attempts_csv, schema_overrides={"problem_id": pl.String})
        .filter(pl.col("is_correct") == 1)
        .group_by("problem_id")
        .agg(pl.col("answer").first())
    )
    right = dict(truth.iter_rows())
    answers = dict(pl.read_parquet(path).iter_rows())
    correct = sum(answers[pid] == right.get(plays[pid]) for pid in ids)
    log.info(
        "simulated AIMO-3 run at speed %.2f: %.0f virtual s of %.0f, %d/50 right",
        speed,
        run_s,
        config.profile.solve_budget_s,
        correct,
    )
    assert correct >= PROBLEMS // 2

"""The sim engine keeps the Engine contract and shares its decode rate as the model says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from submission.attempt_log import LoggedAttempt, LoggedProblem
from submission.config import load_config
from submission.engines.base import Chunk, Engine, EngineError, SamplingParams
from submission.engines.sim import SimEngine

R1 = 100.0
A = 0.5


def engine_with(*attempts: LoggedAttempt, **kwargs: float) -> SimEngine:
    problem = LoggedProblem("p", correct_answer=7, attempts=attempts)
    return SimEngine([problem], single_stream_rate=R1, contention=A, chunk_s=0.25, **kwargs)


async def drain(engine: SimEngine, max_tokens: int = 10_000) -> tuple[list[Chunk], float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    params = SamplingParams(max_tokens=max_tokens, seed=0)
    chunks = [c async for c in engine.stream(SimEngine.problem_text("p"), params)]
    return chunks, loop.time() - started


def test_is_an_engine() -> None:
    assert isinstance(engine_with(LoggedAttempt(7, 100, True)), Engine)


@pytest.mark.looptime
async def test_one_stream_decodes_at_r1_and_ends_boxed() -> None:
    engine = engine_with(LoggedAttempt(answer=7, tokens=1000, finishes=True))
    chunks, seconds = await drain(engine)
    assert seconds == pytest.approx(1000 / R1, abs=0.01)
    assert chunks[-1].finish_reason == "stop" and "\\boxed{7}" in chunks[-1].text
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert sum(c.tokens for c in chunks) == 1000
    assert engine.active == 0


@pytest.mark.looptime
async def test_streams_share_the_rate_and_closing_one_frees_its_share() -> None:
    engine = engine_with(LoggedAttempt(answer=7, tokens=1000, finishes=True))
    together = await asyncio.gather(drain(engine), drain(engine))
    # Two streams: each at R1 / (1 + A).
    assert [s for _, s in together] == [pytest.approx(1000 * (1 + A) / R1, abs=0.3)] * 2

    loop = asyncio.get_running_loop()
    other = engine.stream(SimEngine.problem_text("p"), SamplingParams(max_tokens=10_000, seed=0))
    await anext(other)  # a second stream is open for the first 0.25 s
    started = loop.time()
    runner = asyncio.create_task(drain(engine))
    await asyncio.sleep(1.0)
    await other.aclose()
    _, seconds = await runner
    # 1 s at the shared rate, the rest at R1: faster than sharing all along.
    shared_tokens = R1 / (1 + A) * 1.0
    expected = 1.0 + (1000 - shared_tokens) / R1
    assert loop.time() - started == pytest.approx(expected, abs=0.3)
    assert seconds < 1000 * (1 + A) / R1 - 1
    assert engine.active == 0


@pytest.mark.looptime
async def test_code_calls_pause_the_stream_and_free_its_share() -> None:
    engine = engine_with(LoggedAttempt(answer=7, tokens=1000, finishes=True, code_calls=3))
    engine.code_call_s = 5.0
    alone, seconds = await drain(engine)
    assert seconds == pytest.approx(1000 / R1 + 3 * 5.0, abs=0.01)
    assert sum(c.tokens for c in alone) == 1000 and alone[-1].finish_reason == "stop"
    # Beside a stream without code, the 15 s of calls are decoded alone at R1.
    engine.problems["q"] = LoggedProblem("q", 7, (LoggedAttempt(7, 1000, True),))
    params = SamplingParams(max_tokens=10_000, seed=0)
    plain = engine.stream(SimEngine.problem_text("q"), params)
    plain_s, (_, with_calls_s) = await asyncio.gather(seconds_to_drain(plain), drain(engine))
    # Shared for 250 tokens (3.75 s), alone through the first call (500 tokens), shared again.
    assert plain_s == pytest.approx(3.75 + 5.0 + 3.75, abs=0.3)
    # Then alone: 500 tokens at R1 and the calls left, faster than sharing all along.
    assert with_calls_s == pytest.approx(12.5 + 500 / R1 + 2 * 5.0, abs=0.3)
    assert engine.active == 0


async def seconds_to_drain(stream: AsyncIterator[Chunk]) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async for _ in stream:
        pass
    return loop.time() - started


@pytest.mark.looptime
async def test_cut_off_attempts_never_finish_until_max_tokens() -> None:
    engine = engine_with(LoggedAttempt(answer=None, tokens=500, finishes=False))
    chunks, seconds = await drain(engine, max_tokens=2000)
    assert chunks[-1].finish_reason == "length"
    assert sum(c.tokens for c in chunks) == 2000
    assert seconds == pytest.approx(2000 / R1, abs=0.01)


@pytest.mark.looptime
async def test_start_delay_and_injected_errors() -> None:
    engine = engine_with(
        LoggedAttempt(answer=7, tokens=1000, finishes=True), start_delay_s=600, error_rate=1.0
    )
    loop = asyncio.get_running_loop()
    await engine.start()
    assert loop.time() == pytest.approx(600)
    chunks, _ = await drain(engine)
    assert chunks[-1].finish_reason == "error" and chunks[-1].error
    assert sum(c.tokens for c in chunks) < 1000


def test_same_seed_same_attempt_and_unknown_prompts_still_map() -> None:
    attempts = tuple(LoggedAttempt(answer=i, tokens=100 + i, finishes=True) for i in range(20))
    engine = engine_with(*attempts)
    assert engine.pick("x", 3) == engine.pick("x", 3)
    assert len({engine.pick(SimEngine.problem_text("p"), s)[1] for s in range(20)}) > 5


def test_from_config_reads_the_log_and_fails_clearly_without_one(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text(
        "problem_id,attempt_num,answer,is_none,is_correct,tokens,time_s\n"
        "a,1,5,0,1,1000,10.0\n"
        "a,2,,1,0,3000,30.0\n"
    )
    config = load_config(
        overrides=[
            f"engine.sim.attempts_csv={log}",
            "engine.sim.concurrency=2",
            "engine.sim.speed=2",
        ]
    )
    engine = SimEngine.from_config(config)
    # 100 tokens/s per stream at concurrency 2, a = 0.087, twice as fast.
    assert engine.single_stream_rate == pytest.approx(100 * 1.087 * 2)
    missing = load_config(overrides=[f"engine.sim.attempts_csv={tmp_path / 'nope.csv'}"])
    with pytest.raises(EngineError, match="not found"):
        SimEngine.from_config(missing)


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("profile", "boxed"), [("aimo3", "\\boxed{79744}"), ("aimo2", "\\boxed{744}")]
)
async def test_answers_fall_in_the_profiles_range(profile: str, boxed: str) -> None:
    """The embedded log's answers are AIMO-3's: under AIMO-2 they are reduced mod 1000
    (before: all out of range, so a rehearsal of AIMO-2 on it answered only fallbacks)."""
    config = load_config(profile, overrides=["engine.kind=sim", "engine.sim.speed=1000"])
    engine = SimEngine.from_config(config)
    engine.problems = {"p": LoggedProblem("p", 79744, (LoggedAttempt(79744, 100, True),))}
    chunks, _ = await drain(engine)
    assert chunks[-1].text == boxed

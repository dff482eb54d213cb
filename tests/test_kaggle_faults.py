"""predict() through the real harness, replay engine and sandbox, with faults injected.

Both profiles go through the built-in gateway replay. Engine faults: an
exception mid-stream, a hang mid-stream, 10x slower streaming. Sandbox faults:
the session process killed (a real crash), a sandbox call that never returns.
Every call must return a valid row within the problem's deadline, and
submission.parquet must hold every id exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import psutil
import pytest

from submission import kaggle
from submission.config import PACKAGE_DATA, Config, load_config
from submission.engines.base import Chunk, SamplingParams
from submission.engines.replay import ReplayEngine
from submission.gateway import check_submission, run_builtin_gateway
from submission.harness import Harness
from submission.sandbox import Sandbox

GSM8K = pl.read_csv(PACKAGE_DATA / "gsm8k_first250.csv", schema_overrides={"id": pl.String})
TOKENS_PER_S = 4000.0
MAX_PROBLEM_S = 3.0
# Past its deadline a problem may still take this long: cancelling, closing sessions, answering.
DEADLINE_SLACK_S = 5.0
# The gateway's gRPC ports (v0.3.0: 50051; v0.9.0: 50051, then 60053-60062).
GATEWAY_PORTS = {50051, *range(60053, 60063)}

FAULTS = {
    "gsm8k-0000": None,
    "gsm8k-0001": "engine-raises",
    "gsm8k-0002": "engine-hangs",
    "gsm8k-0003": "engine-slow",
    "gsm8k-0004": "sandbox-crash",
    "gsm8k-0005": "sandbox-hang",
    "gsm8k-0006": None,
}


class FaultyEngine:
    """The replay engine, misbehaving on the problems FAULTS names."""

    name = "faulty-replay"
    greedy = False
    token_prompts = False

    def __init__(self, inner: ReplayEngine, faults: dict[str, str | None]) -> None:
        self.inner = inner
        self.faults = faults

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        fault = next((kind for problem, kind in self.faults.items() if problem in prompt), None)
        count = 0
        async for chunk in self.inner.stream(prompt, params):
            count += 1
            if count == 2 and fault == "engine-raises":
                raise RuntimeError("injected: engine died mid-stream")
            if count == 2 and fault == "engine-hangs":
                await asyncio.Event().wait()  # never set: only cancellation ends this
            if fault == "engine-slow":
                await asyncio.sleep(9 * chunk.tokens / TOKENS_PER_S)  # 10x the normal pace
            yield chunk


class FaultySandbox:
    """The real sandbox; the sessions of some problems crash or hang."""

    def __init__(self, inner: Sandbox, faults: dict[str, str | None]) -> None:
        self.inner = inner
        self.faults = faults

    async def arun(self, code: str, session: str, timeout: float) -> Any:
        fault = self.faults.get(session.rsplit("-a", 1)[0])
        if fault == "sandbox-crash":  # the session process dies for real
            code = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
        if fault == "sandbox-hang":
            await asyncio.Event().wait()
        return await self.inner.arun(code, session=session, timeout=timeout)

    def close_session(self, session: str) -> None:
        self.inner.close_session(session)

    def close(self) -> None:
        self.inner.close()


def fault_config(profile: str) -> Config:
    return load_config(
        profile,
        overrides=[
            "prompt.family=tora",
            "solver.attempts=2",
            f"engine.replay.tokens_per_s={TOKENS_PER_S}",
            f"budget.max_problem_s={MAX_PROBLEM_S}",
            "budget.min_problem_s=1",
            "tir.code_timeout_s=2",
        ],
    )


def problems_by_text() -> dict[str, str | None]:
    rows = GSM8K.filter(pl.col("id").is_in(list(FAULTS)))
    return {problem: FAULTS[pid] for pid, problem in rows.select("id", "problem").iter_rows()}


@pytest.fixture
def test_csv(tmp_path: Path) -> Path:
    path = tmp_path / "test.csv"
    GSM8K.filter(pl.col("id").is_in(list(FAULTS))).select("id", "problem").write_csv(path)
    return path


@pytest.fixture(autouse=True)
def detached() -> Iterator[None]:
    yield
    kaggle.configure(None)


def timed_predict(durations: dict[str, float]):  # type: ignore[no-untyped-def]
    def predict(*columns: pl.Series) -> pl.DataFrame:
        started = time.monotonic()
        frame = kaggle.predict(*columns)
        durations[str(columns[0][0])] = time.monotonic() - started
        return frame

    return predict


def listening_ports() -> set[int]:
    """TCP ports this process and its children listen on."""
    ports: set[int] = set()
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        ports |= {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}
    return ports


@pytest.mark.parametrize("profile", ["aimo2", "aimo3"])
def test_faults_still_give_a_valid_row_in_time(
    profile: str, test_csv: Path, tmp_path: Path
) -> None:
    config = fault_config(profile)
    engine = FaultyEngine(ReplayEngine.from_config(config), problems_by_text())
    sandbox = FaultySandbox(Sandbox.from_config(config), FAULTS)
    harness = Harness.start(config, engine=engine, sandbox=sandbox, problems_total=len(FAULTS))
    kaggle.configure(harness, config)
    durations: dict[str, float] = {}
    try:
        path = run_builtin_gateway(timed_predict(durations), test_csv, config.profile, tmp_path)
        busy_ports = listening_ports() & GATEWAY_PORTS
    finally:
        harness.close()
    assert check_submission(path, test_csv, config.profile) == []
    submission = pl.read_parquet(path)
    assert sorted(submission["id"]) == sorted(FAULTS)
    assert set(durations) == set(FAULTS)
    late = {pid: s for pid, s in durations.items() if s > MAX_PROBLEM_S + DEADLINE_SLACK_S}
    assert not late, f"past the deadline: {late}"
    # Fault-free and merely slow problems are still solved right (the recordings' answers).
    answers = dict(submission.iter_rows())
    expected = dict(GSM8K.select("id", "answer").iter_rows())
    for pid in ("gsm8k-0000", "gsm8k-0003", "gsm8k-0006"):
        assert answers[pid] == expected[pid]
    # The faults did happen, and the run recorded them.
    results = {r.problem_id: r for r in harness.results}
    assert set(results) == set(FAULTS)
    assert all(a.finish_reason == "error" for a in results["gsm8k-0001"].attempts)
    hung = results["gsm8k-0002"].attempts + results["gsm8k-0005"].attempts
    assert all(a.finish_reason == "cancelled" for a in hung)
    # Every code call of that problem that returned crashed; on a loaded machine the deadline
    # may cut an attempt before its first call or during its last (counted, not returned).
    crashed = results["gsm8k-0004"].attempts
    assert any(a.errors for a in crashed)
    assert all(a.code_calls - 1 <= a.errors <= a.code_calls for a in crashed)
    assert not busy_ports, f"we listen on gateway ports {busy_ports}"


def test_an_engine_that_cannot_start_answers_the_fallback_everywhere(
    test_csv: Path, tmp_path: Path
) -> None:
    class BrokenEngine(FaultyEngine):
        async def start(self) -> None:
            raise RuntimeError("injected: engine dir is empty")

    config = fault_config("aimo3")
    config.solver.fallback_answer = 4
    engine = BrokenEngine(ReplayEngine.from_config(config), {})
    sandbox = FaultySandbox(Sandbox.from_config(config), {})
    harness = Harness.start(config, engine=engine, sandbox=sandbox)
    kaggle.configure(harness, config)
    try:
        path = run_builtin_gateway(kaggle.predict, test_csv, config.profile, tmp_path)
    finally:
        harness.close()
    submission = pl.read_parquet(path)
    assert sorted(submission["id"]) == sorted(FAULTS)
    assert submission["answer"].to_list() == [4] * len(FAULTS)


@pytest.mark.parametrize("profile", ["aimo2", "aimo3"])
def test_bad_inputs_through_the_gateway_still_give_every_id_once(
    profile: str, tmp_path: Path
) -> None:
    """Null/blank/1 MB problems and an extra column; then all-numeric columns (Int64 dtypes)."""
    good = GSM8K.row(0, named=True)
    texts = pl.DataFrame(
        {
            "id": ["good", "null", "blank", "huge"],
            "problem": [good["problem"], None, "   ", "x" * 1_000_000],
            "note": ["a", "b", "c", "d"],
        }
    )
    numeric = pl.DataFrame({"id": [1, 2], "problem": [17, 42]})
    config = fault_config(profile)
    harness = Harness.start(config, sandbox=Sandbox.from_config(config))
    kaggle.configure(harness, config)
    durations: dict[str, float] = {}
    try:
        for name, frame in (("texts", texts), ("numeric", numeric)):
            test_csv = tmp_path / f"{name}.csv"
            frame.write_csv(test_csv)
            out = tmp_path / name
            path = run_builtin_gateway(timed_predict(durations), test_csv, config.profile, out)
            submission = pl.read_parquet(path)
            assert check_submission(path, test_csv, config.profile) == []
            assert sorted(submission["id"].cast(pl.String)) == sorted(frame["id"].cast(pl.String))
            assert submission.schema["answer"] == pl.Int64
    finally:
        harness.close()
    answers = dict(
        pl.read_parquet(tmp_path / "texts" / "submission.parquet")
        .select("id", "answer")
        .iter_rows()
    )
    assert answers["good"] == good["answer"]
    fallback = config.solver.fallback_answer
    assert answers["null"] == answers["blank"] == answers["huge"] == fallback
    assert max(durations.values()) < MAX_PROBLEM_S + DEADLINE_SLACK_S

"""predict(): one valid row for every input and every failure, within its deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from submission import kaggle
from submission.config import Config, load_config


class FakeHarness:
    """A run whose readiness and answers the test decides (predict's side of the contract)."""

    def __init__(self, answer: Any = 42, ready: bool = True, hang_s: float = 0.0) -> None:
        self.answer = answer
        self.ready = ready
        self.hang_s = hang_s
        self.calls: list[tuple[str, str, float | None]] = []
        self.fallbacks: dict[str, str] = {}
        self.release = threading.Event()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        return self.ready

    def note_fallback(self, problem_id: str, reason: str) -> None:
        self.fallbacks[problem_id] = reason

    def solve(self, problem_id: str, problem: str, timeout_s: float | None = None) -> int:
        self.calls.append((problem_id, problem, timeout_s))
        if self.hang_s:
            self.release.wait(self.hang_s)  # a solver that ignores its deadline
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
def config() -> Config:
    return load_config("aimo3")


@pytest.fixture(autouse=True)
def detached() -> Iterator[None]:
    yield
    kaggle.configure(None)


def ids(value: str = "0e644e") -> pl.Series:
    return pl.Series("id", [value])


def problems(value: Any = "What is 6*7?", dtype: Any = pl.String) -> pl.Series:
    return pl.Series("problem", [value], dtype=dtype)


def assert_valid_row(frame: pl.DataFrame, served_id: pl.Series, config: Config) -> int:
    assert isinstance(frame, pl.DataFrame)
    assert frame.columns == ["id", "answer"]
    assert frame.height == 1
    assert frame.schema["answer"] == pl.Int64
    assert frame["id"].equals(served_id)  # what AIMO-2's gateway checks
    assert frame["id"].dtype == served_id.dtype
    answer = frame["answer"][0]
    assert config.profile.answer_min <= answer <= config.profile.answer_max
    return answer


def test_answer_of_the_run_with_the_served_id(config: Config) -> None:
    harness = FakeHarness(answer=42)
    kaggle.configure(harness, config)
    frame = kaggle.predict(ids(), problems())
    assert assert_valid_row(frame, ids(), config) == 42
    assert harness.calls[0][:2] == ("0e644e", "What is 6*7?")


def test_before_configure_the_fallback(config: Config) -> None:
    assert assert_valid_row(kaggle.predict(ids(), problems()), ids(), config) == 0


@pytest.mark.parametrize(
    "problem",
    [
        problems(None),
        problems(""),
        problems("   \n"),
        problems("x" * 1_000_000),
        pl.Series("problem", ["a", "b"]),
        pl.Series("problem", [], dtype=pl.String),
        None,
    ],
    ids=["null", "empty", "blank", "1MB", "two-rows", "no-rows", "None"],
)
def test_bad_problems_get_the_fallback_without_solving(config: Config, problem: Any) -> None:
    config.solver.fallback_answer = 7
    harness = FakeHarness(answer=42)
    kaggle.configure(harness, config)
    assert assert_valid_row(kaggle.predict(ids(), problem), ids(), config) == 7
    assert harness.calls == []
    assert list(harness.fallbacks) == ["0e644e"]  # the run's report hears of it, with why
    assert harness.fallbacks["0e644e"].startswith("problem ")


def test_wrong_dtypes_and_extra_columns_still_answer(config: Config) -> None:
    harness = FakeHarness(answer=5)
    kaggle.configure(harness, config)
    numeric_id = pl.Series("id", [123], dtype=pl.Int64)
    frame = kaggle.predict(numeric_id, problems(17, pl.Int64), pl.Series("answer", [1]), "extra")
    assert assert_valid_row(frame, numeric_id, config) == 5
    assert harness.calls[0][:2] == ("123", "17")


def test_an_id_that_is_not_a_series_is_answered_as_text(config: Config) -> None:
    kaggle.configure(FakeHarness(answer=3), config)
    frame = kaggle.predict("abc", problems())  # type: ignore[arg-type]
    assert frame.to_dicts() == [{"id": "abc", "answer": 3}]
    frame = kaggle.predict(None, problems())  # type: ignore[arg-type]
    assert frame.to_dicts() == [{"id": "", "answer": 3}]


@pytest.mark.parametrize(
    "answer", [RuntimeError("solver bug"), 100_000, -1, True, "12", 3.5, None], ids=repr
)
def test_solver_failures_and_bad_answers_get_the_fallback(config: Config, answer: Any) -> None:
    config.solver.fallback_answer = 11
    harness = FakeHarness(answer=answer)
    kaggle.configure(harness, config)
    assert assert_valid_row(kaggle.predict(ids(), problems()), ids(), config) == 11
    assert str(answer) in harness.fallbacks["0e644e"]


def test_engine_not_ready_gets_the_fallback(config: Config) -> None:
    harness = FakeHarness(ready=False)
    kaggle.configure(harness, config)
    assert assert_valid_row(kaggle.predict(ids(), problems()), ids(), config) == 0
    assert harness.calls == []
    assert "still loading" in harness.fallbacks["0e644e"]


def test_the_fallback_is_forced_into_the_range() -> None:
    config = load_config("aimo2", overrides=["solver.fallback_answer=5000"])
    kaggle.configure(FakeHarness(answer=RuntimeError("x")), config)
    assert assert_valid_row(kaggle.predict(ids(), problems()), ids(), config) == 999


def test_a_hung_solver_cannot_hold_predict_past_the_call_limit() -> None:
    """AIMO-2: 30 min a call; here 1.5 s, with 0.5 s kept back to answer."""
    config = load_config("aimo2", overrides=["profile.per_call_limit_s=1.5"])
    harness = FakeHarness(answer=1, hang_s=30)
    kaggle.configure(harness, config, return_margin_s=0.5)
    started = time.monotonic()
    frame = kaggle.predict(ids(), problems())
    elapsed = time.monotonic() - started
    harness.release.set()
    assert assert_valid_row(frame, ids(), config) == 0
    assert elapsed < config.profile.per_call_limit_s
    # The solver was told its limit: the call limit less what predict keeps back.
    assert harness.calls[0][2] == pytest.approx(1.0, abs=0.1)


def test_the_global_budget_counts_from_the_run_start() -> None:
    """A run that started time_limit_s ago has no time left: fallback at once."""
    config = load_config("aimo3", overrides=["profile.time_limit_s=100"])
    harness = FakeHarness(answer=1, hang_s=30)
    kaggle.configure(harness, config, started_at=time.monotonic() - 100)
    started = time.monotonic()
    frame = kaggle.predict(ids(), problems())
    harness.release.set()
    assert assert_valid_row(frame, ids(), config) == 0
    assert time.monotonic() - started < 5


def test_find_kaggle_evaluation_looks_everywhere_and_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    profile = load_config("aimo3").profile
    profile.competition_dir = str(tmp_path / "competition")
    monkeypatch.delenv(kaggle.ENV_KAGGLE_EVALUATION_DIR, raising=False)
    caplog.set_level("INFO")
    assert kaggle.find_kaggle_evaluation(tmp_path / "data", profile) is None
    assert str(tmp_path / "data") in caplog.text and str(tmp_path / "competition") in caplog.text
    # An AIMO-2 package is no use to the aimo3 profile.
    aimo2 = tmp_path / "aimo2" / "kaggle_evaluation"
    aimo2.mkdir(parents=True)
    (aimo2 / "__init__.py").write_text("")
    (aimo2 / "aimo_2_inference_server.py").write_text("")
    assert kaggle.find_kaggle_evaluation(aimo2.parent, profile) is None
    assert "has no aimo_3_inference_server.py" in caplog.text
    aimo3 = tmp_path / "env" / "kaggle_evaluation"
    aimo3.mkdir(parents=True)
    (aimo3 / "__init__.py").write_text("")
    (aimo3 / "aimo_3_inference_server.py").write_text("")
    monkeypatch.setenv(kaggle.ENV_KAGGLE_EVALUATION_DIR, str(aimo3))  # the package folder works too
    assert kaggle.find_kaggle_evaluation(None, profile) == aimo3.parent
    assert kaggle.find_kaggle_evaluation(aimo2.parent, profile) == aimo3.parent

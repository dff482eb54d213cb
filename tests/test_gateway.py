"""The built-in gateway replay: calling convention, validation per version, the file written."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from submission.config import PACKAGE_DATA, load_config
from submission.gateway import GatewayError, check_submission, run_builtin_gateway

REFERENCE = {
    "aimo2": PACKAGE_DATA / "aimo2_reference.csv",
    "aimo3": PACKAGE_DATA / "aimo3_reference.csv",
}
PROFILES = ("aimo2", "aimo3")


def reference_ids(profile: str) -> list[str]:
    return pl.read_csv(REFERENCE[profile], schema_overrides={"id": pl.String})["id"].to_list()


def write_test_csv(tmp_path: Path, profile: str) -> Path:
    """test.csv as on Kaggle: id, problem (answers stay out)."""
    path = tmp_path / "test.csv"
    pl.read_csv(REFERENCE[profile]).select("id", "problem").write_csv(path)
    return path


class Recorder:
    """What predict saw, call by call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []


def make_predict(recorder: Recorder, answer: Any = None, delay_s: float = 0.0):  # type: ignore[no-untyped-def]
    def predict(*columns: pl.Series) -> Any:
        recorder.calls.append(
            {
                "columns": [(c.name, c.dtype, c.len()) for c in columns],
                "id": columns[0][0],
                "thread": threading.current_thread().name,
            }
        )
        time.sleep(delay_s)
        if answer is not None:
            return answer(columns)
        return pl.DataFrame({"id": columns[0], "answer": [len(columns[1][0]) % 1000]})

    return predict


@pytest.mark.parametrize("profile", PROFILES)
def test_calling_convention_and_submission(tmp_path: Path, profile: str) -> None:
    config = load_config(profile)
    test_csv = write_test_csv(tmp_path, profile)
    recorder = Recorder()
    path = run_builtin_gateway(make_predict(recorder), test_csv, config.profile, tmp_path / "out")
    # One call per row, one-row Series per CSV column, named as the columns, never on main.
    assert len(recorder.calls) == len(reference_ids(profile))
    for call in recorder.calls:
        assert call["columns"] == [("id", pl.String, 1), ("problem", pl.String, 1)]
        assert call["thread"] != threading.main_thread().name
    submission = pl.read_parquet(path)
    assert submission.schema == pl.Schema({"id": pl.String, "answer": pl.Int64})
    assert sorted(submission["id"]) == sorted(reference_ids(profile))
    assert submission["id"].to_list() == [c["id"] for c in recorder.calls]
    assert check_submission(path, test_csv, config.profile) == []


def test_order_is_shuffled_by_seed(tmp_path: Path) -> None:
    profile = load_config("aimo3").profile
    test_csv = write_test_csv(tmp_path, "aimo3")
    orders = []
    for seed in (0, 0, 1):
        recorder = Recorder()
        run_builtin_gateway(make_predict(recorder), test_csv, profile, tmp_path / "o", seed=seed)
        orders.append([c["id"] for c in recorder.calls])
    assert orders[0] == orders[1]
    assert orders[0] != orders[2]
    assert sorted(orders[0]) == sorted(orders[2]) == sorted(reference_ids("aimo3"))
    assert orders[0] != reference_ids("aimo3")  # not the file's order


def test_extra_csv_columns_reach_predict(tmp_path: Path) -> None:
    """reference.csv has an answer column: the gateway passes it as a third Series."""
    recorder = Recorder()
    profile = load_config("aimo3").profile
    run_builtin_gateway(make_predict(recorder), REFERENCE["aimo3"], profile, tmp_path)
    assert recorder.calls[0]["columns"] == [
        ("id", pl.String, 1),
        ("problem", pl.String, 1),
        ("answer", pl.Int64, 1),
    ]


def wrong_id(columns: tuple[pl.Series, ...]) -> pl.DataFrame:
    return pl.DataFrame({"id": ["not-the-id"], "answer": [1]})


def test_aimo2_rejects_a_wrong_id_and_aimo3_overwrites_it(tmp_path: Path) -> None:
    recorder = Recorder()
    with pytest.raises(GatewayError) as info:
        run_builtin_gateway(
            make_predict(recorder, wrong_id),
            write_test_csv(tmp_path, "aimo2"),
            load_config("aimo2").profile,
            tmp_path / "a2",
        )
    assert info.value.error_type == "INVALID_SUBMISSION"
    assert not (tmp_path / "a2" / "submission.parquet").exists()
    path = run_builtin_gateway(
        make_predict(recorder, wrong_id),
        write_test_csv(tmp_path, "aimo3"),
        load_config("aimo3").profile,
        tmp_path / "a3",
    )
    assert sorted(pl.read_parquet(path)["id"]) == sorted(reference_ids("aimo3"))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(
    "bad",
    [
        lambda cols: None,
        lambda cols: pl.DataFrame({"id": [cols[0][0]] * 2, "answer": [1, 2]}),
        lambda cols: 7,  # one row for v0.9.0, but neither gateway can name the column
        lambda cols: pl.Series("answer", [7]),
    ],
    ids=["none", "two-rows", "bare-int", "series"],
)
def test_responses_both_gateways_reject(tmp_path: Path, profile: str, bad: Any) -> None:
    with pytest.raises(GatewayError):
        run_builtin_gateway(
            make_predict(Recorder(), bad),
            write_test_csv(tmp_path, profile),
            load_config(profile).profile,
            tmp_path,
        )
    assert list(tmp_path.glob("*.parquet")) == []


def test_aimo2_needs_the_id_column(tmp_path: Path) -> None:
    with pytest.raises(GatewayError, match="missing column id"):
        run_builtin_gateway(
            make_predict(Recorder(), lambda cols: pl.DataFrame({"answer": [1]})),
            write_test_csv(tmp_path, "aimo2"),
            load_config("aimo2").profile,
            tmp_path,
        )


def test_predict_must_be_a_plain_function_named_predict(tmp_path: Path) -> None:
    profile = load_config("aimo3").profile
    test_csv = write_test_csv(tmp_path, "aimo3")

    class Server:
        def predict(self, *cols: pl.Series) -> pl.DataFrame:
            return pl.DataFrame({"id": cols[0], "answer": [0]})

    def solve(*cols: pl.Series) -> pl.DataFrame:
        return pl.DataFrame({"id": cols[0], "answer": [0]})

    for listener in (Server().predict, lambda *cols: None, solve):
        with pytest.raises(GatewayError, match="SERVER_MISSING_ENDPOINT"):
            run_builtin_gateway(listener, test_csv, profile, tmp_path)


def test_a_raising_predict_fails_the_run_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "submission.parquet").write_bytes(b"previous")

    def explode(cols: tuple[pl.Series, ...]) -> pl.DataFrame:
        raise RuntimeError("boom")

    with pytest.raises(GatewayError, match="SERVER_RAISED_EXCEPTION"):
        run_builtin_gateway(
            make_predict(Recorder(), explode),
            write_test_csv(tmp_path, "aimo3"),
            load_config("aimo3").profile,
            tmp_path,
        )
    assert (tmp_path / "submission.parquet").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.parquet", "test.csv"]


def slow_call_predict(slow_call: int, delay_s: float):  # type: ignore[no-untyped-def]
    """A predict whose call number `slow_call` (0-based) takes `delay_s`."""
    calls: list[str] = []

    def predict(*cols: pl.Series) -> pl.DataFrame:
        calls.append(cols[0][0])
        if len(calls) - 1 == slow_call:
            time.sleep(delay_s)
        return pl.DataFrame({"id": cols[0], "answer": [0]})

    return predict


def test_deadline_applies_after_the_first_call(tmp_path: Path) -> None:
    profile = load_config("aimo2").profile
    test_csv = write_test_csv(tmp_path, "aimo2")
    path = run_builtin_gateway(
        slow_call_predict(0, 0.5), test_csv, profile, tmp_path / "ok", response_timeout_s=0.2
    )
    assert pl.read_parquet(path).height == len(reference_ids("aimo2"))
    with pytest.raises(GatewayError, match="SERVER_CONNECTION_FAILED"):
        run_builtin_gateway(
            slow_call_predict(1, 1.0), test_csv, profile, tmp_path / "late", response_timeout_s=0.2
        )
    assert not (tmp_path / "late" / "submission.parquet").exists()


def test_check_submission_finds_what_the_scorer_would_reject(tmp_path: Path) -> None:
    profile = load_config("aimo2").profile
    test_csv = write_test_csv(tmp_path, "aimo2")
    ids = reference_ids("aimo2")
    bad = pl.DataFrame(
        {
            "id": [ids[0], ids[0], *ids[2:], "stranger"],
            "answer": [1, 1, *[5] * (len(ids) - 2), 1000],
        }
    )
    bad.write_parquet(tmp_path / "bad.parquet")
    problems = check_submission(tmp_path / "bad.parquet", test_csv, profile)
    text = "\n".join(problems)
    assert "duplicated ids" in text
    assert f"missing ids: ['{ids[1]}']" in text
    assert "unknown ids: ['stranger']" in text
    assert "outside [0, 999]: [1000]" in text

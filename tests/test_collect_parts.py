"""The collector's parts: problem rows, the store, the engine tap, pass@k/maj@k, the speed
profile and the per-attempt concurrency fit."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from pathlib import Path

import polars as pl
import pytest

from submission.attempt_log import (
    DEFAULT_ATTEMPTS,
    calibrate_engine,
    load_attempt_log,
    problems_from_log,
)
from submission.attempt_store import ShardWriter, StoreBusyError, read_store
from submission.collect import Chunking, CollectError, check_settings, plan_work, settings_of
from submission.config import PACKAGE_DATA, load_config
from submission.engines.base import Chunk, SamplingParams
from submission.engines.sim import SimEngine
from submission.engines.tap import AttemptWatch, TappedEngine, watching
from submission.log_stats import maj_at_k, majority_credit, pass_at_k, score_table
from submission.problem_rows import ProblemRow, read_problem_rows
from submission.speed_profile import (
    SpeedProfile,
    SpeedProfileError,
    fit_engine_model,
    load_profile,
    save_profile,
)


def test_bad_problem_rows_are_reported_by_line_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(
        "id,problem,answer\n"
        "a,What is 1+1?,2\n"  # line 2: good
        ",no id,3\n"  # 3: empty id
        'b,"two\nlines",4\n'  # 4-5: good, a quoted newline
        "a,again,5\n"  # 6: duplicate id
        "c,,6\n"  # 7: empty problem
        "d,x,seven\n"  # 8: answer not an integer
        "e,too,many,fields\n"  # 9: wrong field count
        "\n"  # 10: blank, ignored
        "f,no answer given,\n",  # 11: good, answer unknown
        encoding="utf-8",
    )
    good, bad = read_problem_rows(path)
    assert [(r.problem_id, r.line, r.answer) for r in good] == [
        ("a", 2, 2),
        ("b", 4, 4),
        ("f", 11, None),
    ]
    assert good[1].problem == "two\nlines"
    assert [(b.line, b.reason.split(":")[0]) for b in bad] == [
        (3, "empty id"),
        (6, "id 'a' already on line 2"),
        (7, "id 'c'"),
        (8, "id 'd'"),
        (9, "4 fields, the header has 3"),
    ]
    assert "not an integer" in bad[3].reason and "empty problem" in bad[2].reason


def test_a_torn_last_row_is_not_committed_and_a_shard_has_one_writer(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    with ShardWriter(shards / "chunk-0-of-1.jsonl", fsync=False) as writer:
        writer.append({"problem_id": "p", "attempt_num": 0, "tokens": 5})
        with pytest.raises(StoreBusyError):
            ShardWriter(shards / "chunk-0-of-1.jsonl")
        writer.append({"problem_id": "p", "attempt_num": 1, "tokens": 6})
    with (shards / "chunk-0-of-1.jsonl").open("ab") as f:
        f.write(b'{"problem_id":"p","attempt_num":2,"tok')  # killed mid-line
    store = read_store(shards)
    assert store.keys() == {("p", 0), ("p", 1)} and store.torn_tails == ["chunk-0-of-1.jsonl"]
    with ShardWriter(shards / "chunk-0-of-1.jsonl", fsync=False) as writer:
        assert writer.dropped_torn_tail and writer.rows_at_open == 2
        writer.append({"problem_id": "p", "attempt_num": 2, "tokens": 7})
    # A second chunking's shard holding a key already read: the first shard's row wins.
    with ShardWriter(shards / "chunk-1-of-2.jsonl", fsync=False) as writer:
        writer.append({"problem_id": "p", "attempt_num": 0, "tokens": 99})
    store = read_store(shards)
    assert [r["tokens"] for r in store.rows] == [5, 6, 7]
    assert store.duplicates == 1 and store.torn_tails == [] and store.bad_lines == []


def test_chunks_split_the_problems_and_skip_what_is_done() -> None:
    problems = [ProblemRow(f"p{i}", "x", None, i + 2) for i in range(5)]
    parts = [plan_work(problems, 2, Chunking(i, 3), set()) for i in range(3)]
    keys = [(p.problem_id, n) for part in parts for p, n in part]
    assert sorted(keys) == sorted((f"p{i}", n) for i in range(5) for n in range(2))
    assert [p.problem_id for p, _ in parts[1]] == ["p1", "p1", "p4", "p4"]
    assert plan_work(problems, 2, Chunking(0, 1), {("p0", 0), ("p3", 1)})[:2] == [
        (problems[0], 1),
        (problems[1], 0),
    ]
    with pytest.raises(CollectError):
        Chunking(3, 3)


def test_a_folder_refuses_other_settings(tmp_path: Path) -> None:
    config = load_config(overrides=["engine.kind=sim"])
    check_settings(tmp_path, settings_of(config))
    check_settings(
        tmp_path, settings_of(load_config(overrides=["engine.kind=sim", "collect.concurrency=3"]))
    )
    with pytest.raises(CollectError, match=r"generation\.temperature"):
        check_settings(
            tmp_path,
            settings_of(load_config(overrides=["engine.kind=sim", "generation.temperature=1.0"])),
        )


class TwoChunkEngine:
    """Streams two chunks a second apart."""

    name = "two"
    greedy = False
    token_prompts = False

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        return self._stream(params)

    async def _stream(self, params: SamplingParams) -> AsyncIterator[Chunk]:
        await asyncio.sleep(1.0)
        yield Chunk("a", 2)
        await asyncio.sleep(1.0)
        yield Chunk("b", 1, "stop")


@pytest.mark.looptime
async def test_the_tap_measures_concurrency_per_attempt() -> None:
    engine = TappedEngine(TwoChunkEngine())

    async def attempt(delay: float) -> AttemptWatch:
        await asyncio.sleep(delay)
        with watching(AttemptWatch()) as watch:
            async for _ in engine.stream("p", SamplingParams(max_tokens=9)):
                pass
        return watch

    # The first stream runs 0-2 s, the second 1-3 s: each is alone half its time.
    first, second = await asyncio.gather(attempt(0.0), attempt(1.0))
    for watch in (first, second):
        assert watch.open_s == pytest.approx(2.0)
        assert watch.concurrency == pytest.approx(1.5)
    assert engine.tokens == 6 and engine.active == 0
    assert AttemptWatch().concurrency is None


def test_pass_and_maj_at_k_against_hand_counts() -> None:
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))  # 0.5
    assert pass_at_k(4, 3, 2) == 1.0 and pass_at_k(4, 0, 4) == 0.0
    assert majority_credit([1, 1, 2, None], 1) == 1.0
    assert majority_credit([1, 2, None], 1) == 0.5  # tied with one other answer
    assert majority_credit([None, None], 1) == 0.0
    # k = 1: the share of right answers among all attempts (None votes for nothing).
    assert maj_at_k([1, 1, 2, None], 1, 1, random.Random(0)) == pytest.approx(0.5, abs=0.04)
    frame = pl.DataFrame(
        {"problem_id": ["x"] * 4 + ["y"] * 4 + ["z"] * 4, "answer": [1, 1, 2, None] * 3}
    )
    table = score_table(frame, {"x": 1, "y": 2, "z": None})  # z has no known answer
    assert table["problem_id"].to_list() == ["x", "y", "overall"]
    assert table.columns[4:] == ["pass@1", "pass@2", "pass@4", "maj@1", "maj@2", "maj@4"]
    overall = table.row(2, named=True)
    assert overall["attempts"] == 8 and overall["right"] == 3
    assert overall["pass@4"] == 1.0 and overall["maj@4"] == pytest.approx(0.5)
    assert overall["pass@1"] == pytest.approx((0.5 + 0.25) / 2)


def test_the_fit_weighs_each_attempt_by_its_own_concurrency() -> None:
    # R1 = 100, a = 0.5, 2 s per call: an attempt at n streams decodes 100 / (1 + 0.5(n-1)).
    rows = [(tokens, n, calls) for tokens in (500, 2000) for n in (1, 3, 9) for calls in (0, 4)]
    frame = pl.DataFrame(
        {
            "tokens": [t for t, _, _ in rows],
            "concurrency": [float(n) for _, n, _ in rows],
            "code_calls": [c for _, _, c in rows],
            "time_s": [t * (1 + 0.5 * (n - 1)) / 100 + 2 * c for t, n, c in rows],
        }
    )
    fit = calibrate_engine(frame, concurrency=24, contention=0.5)  # 24 is ignored here
    assert fit.single_stream_rate == pytest.approx(100)
    assert fit.code_call_s == pytest.approx(2)


def test_the_speed_profile_fit_and_file(tmp_path: Path) -> None:
    streams = [1, 2, 4, 8, 16]
    r1, a = fit_engine_model(streams, [200 / (1 + 0.1 * (n - 1)) for n in streams])
    assert (r1, a) == (pytest.approx(200), pytest.approx(0.1))
    assert fit_engine_model([4], [50.0]) == (pytest.approx(50), 0.0)  # one count: no slope
    profile = SpeedProfile("hf", "m", "cpu", "now", (1, 2), (10.0, 9.0), 0.1, r1, a)
    save_profile(profile, tmp_path / "p.json")
    assert load_profile(tmp_path / "p.json") == profile
    (tmp_path / "bad.json").write_text('{"engine": "hf"}')
    with pytest.raises(SpeedProfileError, match="lacks"):
        load_profile(tmp_path / "bad.json")
    with pytest.raises(SpeedProfileError, match="not found"):
        load_profile(tmp_path / "none.json")


def test_the_shipped_sim_problems_are_the_synthetic_logs() -> None:
    """submission/data/synthetic_problems.csv: what SimEngine.problems_frame makes of the
    embedded log (regenerate it from there when the log changes)."""
    expected = SimEngine.problems_frame(problems_from_log(load_attempt_log(DEFAULT_ATTEMPTS)))
    shipped = pl.read_csv(
        PACKAGE_DATA / "synthetic_problems.csv",
        schema={"id": pl.String, "problem": pl.String, "answer": pl.Int64},
    )
    assert shipped.equals(expected)

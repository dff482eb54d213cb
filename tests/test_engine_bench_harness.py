"""submission.bench.harness: the scripted attempts and the benchmark's own numbers."""

from __future__ import annotations

import argparse
import asyncio
import json

from submission.answer import AnswerRange
from submission.bench import harness as bench_harness
from submission.config import load_config
from submission.engines.base import SamplingParams
from submission.families.registry import create_family
from submission.records import AttemptRecord
from submission.tir import TirLoop


def test_scripted_attempts_run_through_the_tir_loop_as_written():
    config = load_config("aimo3", None, [])
    family = create_family(config)
    tags = family.tags
    transcripts = bench_harness.load_transcripts()
    scripts = [bench_harness.attempt_script(transcripts, 400, 3, tags, offset=i) for i in range(2)]
    engine = bench_harness.FastEngine(scripts)
    runner = bench_harness.InstantRunner(engine)
    tir = TirLoop(engine, runner, family, config.tir, AnswerRange(0, 99_999))
    records = [AttemptRecord(problem_id="p", attempt_num=i, seed=i) for i in range(2)]
    params = [SamplingParams(max_tokens=10_000, seed=i, stop=("<|im_end|>",)) for i in range(2)]

    async def main() -> None:
        await asyncio.gather(
            *(
                tir.run_attempt(r, "Q", p, str(r.attempt_num))
                for r, p in zip(records, params, strict=True)
            )
        )

    asyncio.run(main())
    for record, script in zip(records, scripts, strict=True):
        assert (record.answer, record.code_calls, record.errors) == (18, 3, 0)
        written = sum(c.tokens for round_ in script for c in round_.chunks)
        # The attempt generates to the end of its text (tir.stop_at_boxed is off).
        assert (record.finish_reason, record.tokens) == ("stop", written)
        for round_ in script[:-1]:  # each recorded output was fed back after its code
            assert tags.format_output(round_.output) in record.text
    assert len(engine.call_seconds) == 6
    flat = bench_harness.without_calls(scripts[0])
    assert len(flat) == 1
    assert sum(c.tokens for c in flat[0].chunks) == records[0].tokens
    assert "".join(c.text for c in flat[0].chunks).count(tags.code_begin) == 3


def test_benchmark_reports_every_case(capsys):
    parser = argparse.ArgumentParser()
    bench_harness.add_arguments(parser)
    args = parser.parse_args(["--streams", "2", "--calls", "2", "--reps", "1", "--json"])
    assert bench_harness.run(args) == 0
    results = json.loads(capsys.readouterr().out)
    cases = results["cases"]
    assert [(c["target_tokens"], c["calls_per_attempt"]) for c in cases] == [
        (1000, 0),
        (1000, 2),
        (16000, 0),
        (16000, 2),
    ]
    long_case = cases[2]
    assert long_case["tokens_per_attempt"] > 10 * cases[0]["tokens_per_attempt"] / 2
    for case in cases:
        # Both sides measured (which is faster is the benchmark's finding, not a test's).
        assert case["tir_us_per_token"] > 0 and case["anchor_engine_only_us_per_token"] > 0
    assert all(c["harness_us_per_call_median"] > 0 for c in cases if c["calls"])

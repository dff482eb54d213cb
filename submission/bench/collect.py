"""`python -m submission bench collect`: what the collector costs the engine, at 64 streams.

One engine, started once, serves both sides in turn, `--reps` times each:
- anchor: the bare engine, `--streams` requests of one prompt (an embedded
  AIMO-3 reference problem) with seeds 0..streams-1, drained as they come;
- collector: the same attempts (attempt i samples with seed i) through the
  collector: `TappedEngine`, the Solver's attempt path (TIR loop, sandbox on a
  code call), each row committed to a shard with the config's fsync.
Each side's tokens/s is its tokens over the wall time until its last stream
ended; each rep runs both sides back to back (which goes first alternates),
and the overhead is the median over reps of 1 - collector / anchor. Target:
under 5% (`--json` for the numbers). Both sides decode the same tokens where
the engine is seeded (hf, sim); `--max-tokens` caps each stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

from submission.attempt_store import ShardWriter
from submission.collect import Chunking, Collector
from submission.config import (
    PACKAGE_DATA,
    Config,
    ConfigError,
    add_config_arguments,
    config_from_args,
)
from submission.engines.base import Engine, Prompt, SamplingParams
from submission.engines.registry import create_engine
from submission.engines.tap import TappedEngine
from submission.families.registry import create_family
from submission.policy.defaults import default_policy
from submission.problem_rows import ProblemRow
from submission.solver import Solver

log = logging.getLogger(__name__)

TARGET_OVERHEAD = 0.05
PROBLEMS = PACKAGE_DATA / "aimo3_reference.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=512, help="cap per stream")
    parser.add_argument("--reps", type=int, default=3, help="runs per side (median kept)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    if args.streams < 1 or args.max_tokens < 1 or args.reps < 1:
        log.error("--streams, --max-tokens and --reps must be positive")
        return 2
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    config.generation = replace(config.generation, max_tokens=args.max_tokens)
    config.collect = replace(config.collect, concurrency=args.streams)
    results = asyncio.run(measure(config, args.streams, args.reps))
    if args.json:
        sys.stdout.write(json.dumps(results, indent=1) + "\n")
    else:
        print_results(results)
    return 0


async def measure(config: Config, streams: int, reps: int) -> dict[str, Any]:
    from submission.sandbox import Sandbox

    family = create_family(config)
    sandbox = Sandbox.from_config(config, family.session_prelude)  # before CUDA
    engine = create_engine(config)
    first = pl.read_csv(PROBLEMS).row(0, named=True)
    problem = ProblemRow(str(first["id"]), str(first["problem"]), None, 2)
    anchor: list[dict[str, float]] = []
    collector: list[dict[str, float]] = []
    try:
        await engine.start()
        tapped = TappedEngine(engine)
        solver = Solver(tapped, sandbox, config, default_policy(config), family)
        await asyncio.to_thread(solver.check_ready)
        prompt = solver.render(problem.problem)
        for rep in range(reps):
            # Alternating which side goes first (ABBA): a machine whose load drifts during
            # the run then favours neither side.
            if rep % 2:
                collector.append(await _collected(config, solver, tapped, problem, streams))
                anchor.append(await _bare(engine, prompt, streams, config))
            else:
                anchor.append(await _bare(engine, prompt, streams, config))
                collector.append(await _collected(config, solver, tapped, problem, streams))
            log.info(
                "rep %d: anchor %.1f tokens/s, collector %.1f tokens/s",
                rep + 1,
                anchor[-1]["tokens_per_s"],
                collector[-1]["tokens_per_s"],
            )
    finally:
        await engine.close()
        sandbox.close()
    anchor_rate = statistics.median(r["tokens_per_s"] for r in anchor)
    collector_rate = statistics.median(r["tokens_per_s"] for r in collector)
    paired = [
        1.0 - c["tokens_per_s"] / a["tokens_per_s"] for a, c in zip(anchor, collector, strict=True)
    ]
    return {
        "engine": config.engine.kind,
        "streams": streams,
        "max_tokens": config.generation.max_tokens,
        "reps": reps,
        "anchor": anchor,
        "collector": collector,
        "anchor_tokens_per_s": anchor_rate,
        "collector_tokens_per_s": collector_rate,
        "overhead_per_rep": paired,
        "overhead": statistics.median(paired),  # of the paired reps
        "target_overhead": TARGET_OVERHEAD,
    }


async def _bare(engine: Engine, prompt: Prompt, streams: int, config: Config) -> dict[str, float]:
    async def drain(seed: int) -> int:
        params = SamplingParams.from_generation(config.generation, seed)
        return sum([chunk.tokens async for chunk in engine.stream(prompt, params)])

    began = time.perf_counter()
    tokens = sum(await asyncio.gather(*(drain(s) for s in range(streams))))
    return _rate(tokens, time.perf_counter() - began)


async def _collected(
    config: Config, solver: Solver, tapped: TappedEngine, problem: ProblemRow, streams: int
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        writer = ShardWriter(Path(folder) / "bench.jsonl", fsync=config.collect.fsync)
        try:
            tokens_before = tapped.tokens
            began = time.perf_counter()
            await Collector(config, solver, writer, Chunking()).run(
                [(problem, i) for i in range(streams)]
            )
            seconds = time.perf_counter() - began
        finally:
            writer.close()
    return _rate(tapped.tokens - tokens_before, seconds)


def _rate(tokens: int, seconds: float) -> dict[str, float]:
    return {"tokens": float(tokens), "seconds": seconds, "tokens_per_s": tokens / seconds}


def print_results(results: dict[str, Any]) -> None:
    table = Table(
        title=f"collector overhead: {results['engine']} engine, {results['streams']} streams, "
        f"{results['max_tokens']} tokens each, median of {results['reps']}"
    )
    for column in ("side", "tokens/s", "tokens", "seconds"):
        table.add_column(column, justify="right")
    for side in ("anchor", "collector"):
        runs = results[side]
        table.add_row(
            "bare engine (anchor)" if side == "anchor" else "through the collector",
            f"{results[f'{side}_tokens_per_s']:.1f}",
            f"{statistics.median(r['tokens'] for r in runs):.0f}",
            f"{statistics.median(r['seconds'] for r in runs):.2f}",
        )
    console = Console(file=sys.stdout)
    console.print(table)
    verdict = "within" if results["overhead"] < results["target_overhead"] else "OVER"
    per_rep = ", ".join(f"{100 * o:.1f}%" for o in results["overhead_per_rep"])
    console.print(
        f"overhead {100 * results['overhead']:.1f}% (median of the reps: {per_rep}; "
        f"{verdict} the {100 * results['target_overhead']:.0f}% target)"
    )

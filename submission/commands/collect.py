"""`python -m submission collect`: a problems CSV through the harness, every attempt to its end.

The collection itself is `submission.collect`. This command reads the problems
(bad rows reported by line and skipped), checks the folder's settings, opens
its chunk's shard, starts the sandbox (before the engine touches CUDA) and the
engine, shows progress, then merges every shard in the folder into the
attempt log and the pass@k / maj@k table (`--merge` does only that). Run the
same command again to resume: what was committed is skipped.

Exit codes: 0 done; 1 some attempts failed in the engine (not kept: run again
to retry them); 2 bad input (problems file, settings, chunk, a busy shard);
130 interrupted (what was committed stays).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from submission.attempt_store import ShardWriter, StoreBusyError, read_store
from submission.collect import (
    SHARDS,
    Chunking,
    CollectError,
    Collector,
    CollectOutcome,
    MergeResult,
    check_problems,
    check_settings,
    merge,
    plan_work,
    settings_of,
)
from submission.commands.progress_bar import LiveProgress
from submission.config import (
    PACKAGE_DATA,
    Config,
    ConfigError,
    add_config_arguments,
    config_from_args,
)
from submission.engines.base import EngineError
from submission.problem_rows import ProblemRow, ProblemRowsError, read_problem_rows

log = logging.getLogger(__name__)

DEFAULT_PROBLEMS = PACKAGE_DATA / "aimo3_reference.csv"
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--problems",
        type=Path,
        default=DEFAULT_PROBLEMS,
        help="CSV with id,problem[,answer] (default: the embedded AIMO-3 reference problems)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="collect folder (default: OUTPUT_DIR/collect)"
    )
    parser.add_argument(
        "--chunk",
        default=None,
        metavar="I/N",
        help="run only chunk I of N (0-based; default: the SLURM array task, else 0/1)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="only merge the folder's shards (no collecting)"
    )


def chunk_from(text: str | None, environ: dict[str, str]) -> Chunking:
    """--chunk I/N, else the SLURM array task (id - min of count), else the whole file."""
    if text is None and "SLURM_ARRAY_TASK_ID" in environ:
        first = int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        index = int(environ["SLURM_ARRAY_TASK_ID"]) - first
        return Chunking(index, int(environ["SLURM_ARRAY_TASK_COUNT"]))
    if text is None:
        return Chunking()
    index, _, count = text.partition("/")
    try:
        return Chunking(int(index), int(count))
    except ValueError:
        raise CollectError(f"--chunk {text!r}: give I/N, e.g. 0/4") from None


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        out_dir = args.out or Path(config.output.out_dir) / "collect"
        if args.merge:
            return _print_merge(merge(out_dir), out_dir)
        chunk = chunk_from(args.chunk, dict(os.environ))
        problems = _read_problems(args.problems)
        check_settings(out_dir, settings_of(config))
    except (ConfigError, CollectError, ProblemRowsError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    try:
        outcome = asyncio.run(_collect(config, problems, out_dir, chunk))
    except (CollectError, StoreBusyError, EngineError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        log.error("interrupted: what was committed stays in %s; run again to go on", out_dir)
        return EXIT_INTERRUPTED
    code = _print_merge(merge(out_dir), out_dir)
    if outcome.failed:
        log.error(
            "%d attempts failed in the engine and were not kept (first: %s); "
            "run the same command again to retry them",
            outcome.failed,
            outcome.first_error,
        )
        return EXIT_FAILED
    return code


def _read_problems(path: Path) -> list[ProblemRow]:
    problems, bad = read_problem_rows(path)
    for row in bad:
        log.warning("%s line %d skipped: %s", path, row.line, row.reason)
    if not problems:
        raise CollectError(f"{path}: no usable problem rows")
    if bad:
        log.warning("%s: %d bad rows skipped, %d problems kept", path, len(bad), len(problems))
    return problems


async def _collect(
    config: Config, problems: list[ProblemRow], out_dir: Path, chunk: Chunking
) -> CollectOutcome:
    writer = ShardWriter(out_dir / SHARDS / chunk.shard_name, fsync=config.collect.fsync)
    try:
        if writer.dropped_torn_tail:
            log.warning("%s: dropped a torn last row (its writer was killed)", writer.path)
        store = read_store(out_dir / SHARDS)
        check_problems(store, problems)
        done = store.keys()
        attempts = config.collect.attempts
        work = plan_work(problems, attempts, chunk, done)
        owned = [p for i, p in enumerate(problems) if chunk.owns(i)]
        total = len(owned) * attempts
        log.info(
            "collect chunk %s into %s: %d problems x %d attempts, %d already committed, %d to run",
            chunk,
            out_dir,
            len(owned),
            attempts,
            total - len(work),
            len(work),
        )
        if not work:
            return CollectOutcome()
        left = {p.problem_id: 0 for p in owned}
        for problem, _ in work:
            left[problem.problem_id] += 1
        return await _run(config, work, writer, chunk, total, left)
    finally:
        writer.close()


async def _run(
    config: Config,
    work: list[tuple[ProblemRow, int]],
    writer: ShardWriter,
    chunk: Chunking,
    total: int,
    left: dict[str, int],
) -> CollectOutcome:
    """Start the sandbox and the engine, run the work with progress, stop both."""
    from submission.engines.registry import create_engine
    from submission.engines.tap import TappedEngine
    from submission.families.registry import create_family
    from submission.policy.defaults import default_policy
    from submission.sandbox import Sandbox
    from submission.solver import Solver

    family = create_family(config)
    sandbox = Sandbox.from_config(config, family.session_prelude)  # before CUDA
    engine = TappedEngine(create_engine(config))
    try:
        began = time.monotonic()
        await engine.start()
        solver = Solver(engine, sandbox, config, default_policy(config), family)
        await asyncio.to_thread(solver.check_ready)  # the family's vocabulary; engine fit
        log.info("engine %s started in %.1f s", engine.name, time.monotonic() - began)
        if engine.greedy:
            log.warning("engine %s decodes greedily: its attempts will be identical", engine.name)
        problems_total = len(left)
        problems_done = sum(1 for n in left.values() if n == 0)
        started, tokens_at_start = time.monotonic(), engine.tokens

        def status() -> str:
            rate = (engine.tokens - tokens_at_start) / max(1e-9, time.monotonic() - started)
            return f"problems {problems_done}/{problems_total}, {rate:,.0f} tokens/s"

        with LiveProgress(
            "collect", total, total - len(work), status, "attempts", enabled=config.output.progress
        ) as progress:

            def on_row(row: dict[str, object]) -> None:
                nonlocal problems_done
                left[str(row["problem_id"])] -= 1
                problems_done += left[str(row["problem_id"])] == 0
                progress.advance()

            collector = Collector(config, solver, writer, chunk, on_row)
            ticker = asyncio.create_task(_tick(progress))
            try:
                return await collector.run(work)
            finally:
                ticker.cancel()
    finally:
        await engine.close()
        sandbox.close()


async def _tick(progress: LiveProgress) -> None:
    while True:  # tokens/s and time left move between commits too
        await asyncio.sleep(1.0)
        progress.refresh()


def _print_merge(result: MergeResult, out_dir: Path) -> int:
    from rich.console import Console
    from rich.markdown import Markdown

    from submission.log_stats import render_markdown

    if result.attempts == 0:
        log.error("%s holds no committed attempts", out_dir)
        return EXIT_BAD_INPUT
    console = Console(file=sys.stdout)
    console.print(Markdown(render_markdown(result.table, f"pass@k / maj@k ({out_dir})")))
    log.info(
        "merged %d attempts of %d problems from %d shards: %s",
        result.attempts,
        result.problems,
        result.store.shards,
        ", ".join(str(path) for path in result.written.values()),
    )
    return 0

"""`python -m submission bench speed`: measure this box's speed profile for the simulator.

Run it on the box the competition gives (or the closest at hand), with the
engine and model you will submit. It starts the sandbox (before the engine
touches CUDA), then the engine, and measures:
- for each stream count n (`--streams`, default 1 2 4 8 16), n streams of the
  same prompt (an embedded AIMO-3 reference problem) with different seeds, each
  up to `--max-tokens`: each stream's decode rate, from its first chunk to its
  last (so the prompt's prefill is left out), averaged over the streams;
- the median seconds of `--code-cells` recorded code cells (the embedded ToRA
  transcripts' code) run in this box's sandbox, each in a fresh session.
Then it fits R1 and a (`speed_profile.fit_engine_model`), prints the table and
writes the profile (`--out`, JSON) that `simulate --speed-profile` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from submission.bench.harness import load_transcripts
from submission.collect import engine_identity
from submission.config import (
    PACKAGE_DATA,
    Config,
    ConfigError,
    add_config_arguments,
    config_from_args,
)
from submission.engines.base import Engine, Prompt, SamplingParams
from submission.engines.registry import create_engine
from submission.families.registry import create_family
from submission.speed_profile import SpeedProfile, fit_engine_model, save_profile

log = logging.getLogger(__name__)

PROMPT_PROBLEMS = PACKAGE_DATA / "aimo3_reference.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16], metavar="N")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens per stream")
    parser.add_argument("--code-cells", type=int, default=20, help="recorded code cells to run")
    parser.add_argument("--out", type=Path, default=Path("speed_profile.json"))


def run(args: argparse.Namespace) -> int:
    if min(args.streams) < 1 or args.max_tokens < 2 or args.code_cells < 1:
        log.error("--streams, --max-tokens (>= 2) and --code-cells must be positive")
        return 2
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    profile = asyncio.run(
        measure(config, sorted(set(args.streams)), args.max_tokens, args.code_cells)
    )
    save_profile(profile, args.out)
    print_profile(profile)
    log.info("speed profile written to %s", args.out)
    return 0


async def measure(config: Config, streams: list[int], max_tokens: int, cells: int) -> SpeedProfile:
    from submission.sandbox import Sandbox

    family = create_family(config)
    sandbox = Sandbox.from_config(config, family.session_prelude)  # before CUDA
    engine = create_engine(config)
    try:
        code_call_s = await _code_call_seconds(sandbox, cells, config.tir.code_timeout_s)
        await engine.start()
        family.load()
        prompt = family.render(pl.read_csv(PROMPT_PROBLEMS)["problem"][0])
        rates = []
        for n in streams:
            rate = await _stream_rate(engine, prompt, n, max_tokens, config)
            log.info("%d streams: %.1f tokens/s per stream", n, rate)
            rates.append(rate)
    finally:
        await engine.close()
        sandbox.close()
    single, contention = fit_engine_model(streams, rates)
    return SpeedProfile(
        engine=config.engine.kind,
        model=engine_identity(config),
        device=_device(config),
        measured_at=datetime.datetime.now().isoformat(timespec="seconds"),
        streams=tuple(streams),
        tokens_per_s=tuple(rates),
        code_call_s=code_call_s,
        single_stream_rate=single,
        contention=contention,
    )


async def _stream_rate(
    engine: Engine, prompt: Prompt, streams: int, max_tokens: int, config: Config
) -> float:
    """Each stream's decode rate (first chunk to last), averaged over `streams` at once."""
    loop = asyncio.get_running_loop()
    generation = config.generation

    async def one(seed: int) -> float | None:
        params = replace(SamplingParams.from_generation(generation, seed), max_tokens=max_tokens)
        first: float | None = None
        tokens = 0
        async for chunk in engine.stream(prompt, params):
            if first is None:
                first = loop.time()
            else:
                tokens += chunk.tokens
            last = loop.time()
        if first is None or tokens == 0 or last <= first:
            return None
        return tokens / (last - first)

    rates = [r for r in await asyncio.gather(*(one(s) for s in range(streams))) if r]
    if not rates:
        raise RuntimeError(f"bench speed: no stream of {streams} decoded two chunks")
    return statistics.fmean(rates)


async def _code_call_seconds(sandbox: object, cells: int, timeout_s: float) -> float:
    codes = [code for _, code, _ in load_transcripts()][:cells]
    seconds = []
    for index, code in enumerate(codes):
        session = f"speed-{index}"
        began = time.perf_counter()
        await sandbox.arun(code, session=session, timeout=timeout_s)  # type: ignore[attr-defined]
        seconds.append(time.perf_counter() - began)
        sandbox.close_session(session)  # type: ignore[attr-defined]
    return statistics.median(seconds)


def _device(config: Config) -> str:
    if config.engine.kind in ("sim", "replay"):
        return f"{config.engine.kind} engine (no device)"
    if shutil.which("nvidia-smi"):
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
        if done.returncode == 0 and names:
            return f"{len(names)}x {names[0]}"
    return "cpu"


def print_profile(profile: SpeedProfile) -> None:
    table = Table(title=f"speed profile: {profile.describe()}")
    for column in ("streams", "tokens/s per stream", "all streams", "model fit"):
        table.add_column(column, justify="right")
    for n, rate in zip(profile.streams, profile.tokens_per_s, strict=True):
        fitted = profile.single_stream_rate / (1 + profile.contention * (n - 1))
        table.add_row(str(n), f"{rate:.1f}", f"{rate * n:.1f}", f"{fitted:.1f}")
    console = Console(file=sys.stdout)
    console.print(table)
    console.print(f"code cell in this box's sandbox: {profile.code_call_s:.3f} s (median)")

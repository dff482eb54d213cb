"""Helpers several engine tests share."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from submission.engines.base import Chunk, Engine, SamplingParams


async def collect(engine: Engine, prompt: str, params: SamplingParams) -> list[Chunk]:
    """Every chunk of one stream; a runaway stream fails (each chunk but the last holds a token)."""
    chunks = []
    async for chunk in engine.stream(prompt, params):
        chunks.append(chunk)
        assert len(chunks) <= params.max_tokens + 2
    return chunks


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def cached(request: pytest.FixtureRequest, name: str, build: Callable[[Path], Path]) -> Path:
    """`build(folder)` once: later calls (other test modules, other runs) reuse the folder,
    kept in pytest's cache, or in this run's temporary folder under `-p no:cacheprovider`."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        root = cache.mkdir(name)
    else:
        root = request.getfixturevalue("tmp_path_factory").getbasetemp() / "built" / name
        root.parent.mkdir(parents=True, exist_ok=True)
    done = root / ".complete"
    if not done.exists():
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        build(partial)
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
        (root / ".complete").touch()
    return root


def fast_sim(attempts: int, concurrency: int) -> list[str]:
    """`--set` arguments for the sim engine in real time, fast (an attempt takes about half
    a second at 8 streams), for commands that run whole collects."""
    settings = [
        "engine.kind=sim",
        "engine.sim.tokens_per_s=20000",
        "engine.sim.code_call_s=0",
        "engine.sim.chunk_s=0.02",
        "generation.max_tokens=8000",
        f"collect.attempts={attempts}",
        f"collect.concurrency={concurrency}",
    ]
    return [arg for setting in settings for arg in ("--set", setting)]

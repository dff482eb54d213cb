"""Helpers several engine tests share."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

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


def cached(root: Path, build: Callable[[Path], Path]) -> Path:
    """`build(root)` once: later calls (other test modules, other runs) reuse the folder."""
    done = root / ".complete"
    if not done.exists():
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        build(partial)
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
        (root / ".complete").touch()
    return root

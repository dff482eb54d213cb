"""Helpers several engine tests share."""

from __future__ import annotations

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

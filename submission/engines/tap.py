"""An engine wrapped to watch what it serves, for the collector's timing columns.

`TappedEngine` passes every call through to the engine it wraps and keeps, at
O(1) per chunk: the streams open now, the area under that count over time
(so a stream's mean concurrency is the area over its life divided by its
length), the tokens streamed in all, and per attempt (an `AttemptWatch` the
caller installs with `watching()` in the attempt's task; async generators run
in their consumer's context, so every stream of that attempt finds it) the
seconds its requests were open and the streams in flight meanwhile. (Each
attempt's entropy is the TIR loop's: `generation.top_logprobs` asks for it.)
Time is the running event loop's, so virtual-time tests see virtual seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from submission.engines.base import Chunk, Engine, Prompt, SamplingParams


@dataclass
class AttemptWatch:
    """What the engine did for one attempt (all its requests together)."""

    open_s: float = 0.0  # seconds its requests were open (decoding, queued or prefilling)
    stream_area: float = 0.0  # streams in flight integrated over those seconds

    @property
    def concurrency(self) -> float | None:
        """The mean number of streams in flight while its requests were open."""
        return self.stream_area / self.open_s if self.open_s > 0 else None


_WATCH: contextvars.ContextVar[AttemptWatch | None] = contextvars.ContextVar(
    "attempt_watch", default=None
)


@contextlib.contextmanager
def watching(watch: AttemptWatch) -> Iterator[AttemptWatch]:
    """Count the streams opened in this task (and tasks it starts) to `watch`."""
    token = _WATCH.set(watch)
    try:
        yield watch
    finally:
        _WATCH.reset(token)


class TappedEngine:
    """`engine`, with the streams it serves counted (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.name = engine.name
        self.greedy = engine.greedy
        self.token_prompts = getattr(engine, "token_prompts", False)
        self.active = 0  # streams open now
        self.tokens = 0  # streamed in all
        self._area = 0.0  # streams open, integrated over time up to `_last`
        self._last: float | None = None

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.close()

    def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Chunk]:
        return self._stream(prompt, params)

    def _advance(self) -> float:
        """Bring the area up to now; the area so far."""
        now = asyncio.get_running_loop().time()
        if self._last is not None:
            self._area += self.active * (now - self._last)
        self._last = now
        return self._area

    async def _stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Chunk]:
        watch = _WATCH.get()
        loop = asyncio.get_running_loop()
        self._advance()
        self.active += 1
        opened_at, area_at_open = loop.time(), self._area
        try:
            async with contextlib.aclosing(self.engine.stream(prompt, params)) as chunks:
                async for chunk in chunks:
                    self.tokens += chunk.tokens
                    yield chunk
        finally:
            area = self._advance()
            self.active -= 1
            if watch is not None:
                watch.open_s += loop.time() - opened_at
                watch.stream_area += area - area_at_open

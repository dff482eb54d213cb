"""The Engine seam: async, streaming, cancellable text generation.

Every engine (trtllm, hf, openai, replay, sim) implements `Engine`. The TIR loop
only ever calls `stream()`: it iterates chunks until one carries a finish
reason, and it aborts a request by closing the iterator (``aclose()``) or by
having its task cancelled, which closes it too.

Conventions every engine keeps:
- The matched stop string is NOT part of the text; it is reported in
  `Chunk.stop` (the TIR loop appends what it needs).
- The last chunk of a stream has `finish_reason` set; no chunk follows it.
- Errors inside the engine end the stream with `finish_reason="error"` and
  `error` set; they are not raised into the harness.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from submission.config import GenerationConfig

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """What one generation request asks for.

    `max_tokens` is required: TensorRT-LLM would default it to 32.
    """

    max_tokens: int
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def from_generation(cls, generation: GenerationConfig, seed: int | None) -> SamplingParams:
        """The request an attempt sends: the config's generation section, with its own seed."""
        return cls(
            max_tokens=generation.max_tokens,
            temperature=generation.temperature,
            top_p=generation.top_p,
            top_k=generation.top_k,
            min_p=generation.min_p,
            repetition_penalty=generation.repetition_penalty,
            seed=seed,
            stop=generation.stop,
        )


@dataclass(frozen=True)
class Chunk:
    """New text from one stream, and at the end why it ended."""

    text: str
    tokens: int
    finish_reason: FinishReason | None = None
    stop: str | None = None  # the stop string matched, when finish_reason == "stop"
    error: str | None = None
    # Engine-specific extras (e.g. "entropy", or the replay engine's "recorded_output").
    meta: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """A text generator that many attempts share."""

    name: str
    # True when sampling is ignored (e.g. a greedy ReDrafter engine): K attempts
    # would all be identical, so the solver runs one.
    greedy: bool

    async def start(self) -> None:
        """Load whatever is needed; may take minutes. Idempotent."""
        ...

    def stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        """Generate a continuation of `prompt`. Closing the iterator aborts the request."""
        ...

    async def close(self) -> None:
        """Release the engine's resources."""
        ...


class EngineError(RuntimeError):
    """An engine that cannot start (bad engine dir, version mismatch, ...): raised at start."""

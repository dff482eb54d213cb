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
- A prompt is text, or token ids where the model family renders tokens itself
  (harmony). An engine that cannot take ids (`Engine.token_prompts` False) ends
  such a stream with an error chunk that says so.
- A stop token id (`SamplingParams.stop_token_ids`) ends the stream with
  `finish_reason="stop"` and `Chunk.stop_token` set; its text is not part of
  `Chunk.text`, its id is the last of `Chunk.token_ids` where the engine reports ids.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from submission.config import GenerationConfig

FinishReason = Literal["stop", "length", "cancelled", "error"]
# What an engine continues: rendered text, or token ids (a family that renders tokens).
Prompt = str | Sequence[int]


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
    # Token ids that end the generation (harmony: <|return|>, <|call|>); reported in
    # Chunk.stop_token.
    stop_token_ids: tuple[int, ...] = ()
    # How many top log-probabilities per generated token the engine should look at
    # (0 = none); an engine that can reports each token's entropy over them.
    top_logprobs: int = 0

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
            top_logprobs=generation.top_logprobs,
        )


@dataclass(frozen=True)
class Chunk:
    """New text from one stream, and at the end why it ended."""

    text: str
    tokens: int
    finish_reason: FinishReason | None = None
    stop: str | None = None  # the stop string matched, when finish_reason == "stop"
    stop_token: int | None = None  # the stop token id matched (SamplingParams.stop_token_ids)
    error: str | None = None
    # The ids of this chunk's tokens, where the engine reports them (empty = unknown).
    token_ids: tuple[int, ...] = ()
    # Per generated token, the entropy of its top-`top_logprobs` distribution (nats), where
    # the engine was asked for them and reports them.
    token_entropies: tuple[float, ...] = ()
    # Engine-specific extras (e.g. "entropy", or the replay engine's "recorded_output").
    meta: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """A text generator that many attempts share."""

    name: str
    # True when sampling is ignored (e.g. a greedy ReDrafter engine): K attempts
    # would all be identical, so the solver runs one.
    greedy: bool
    # True when `stream` takes token-id prompts as well as text.
    token_prompts: bool

    async def start(self) -> None:
        """Load whatever is needed; may take minutes. Idempotent."""
        ...

    def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Chunk]:
        """Generate a continuation of `prompt`. Closing the iterator aborts the request."""
        ...

    async def close(self) -> None:
        """Release the engine's resources."""
        ...


class EngineError(RuntimeError):
    """An engine that cannot start (bad engine dir, version mismatch, ...): raised at start."""

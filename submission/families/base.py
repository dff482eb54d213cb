"""The model-family seam: how one model family is prompted, parsed, and shown its code's run.

A family (openmath, tora, harmony) is one module behind `ModelFamily`: it renders a
problem into the engine's prompt (text, or token ids for a family that renders
tokens), names what the engine must stop at, and starts a `Transcript` per attempt.
The transcript parses the stream as it comes, says at each round's end whether the
model asked for code to run, appends the tool reply in the family's own format,
gives the next prompt, the text kept in the record, and the answer.

The TIR loop (tir.py) knows only this seam. A new family is one module and one line
in registry.py. Nothing here imports an engine: a chunk is read through
`StreamChunk`, which the engines' `Chunk` satisfies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# What an engine continues (the Engine seam's `Prompt`): rendered text or token ids.
Prompt = str | Sequence[int]


# Statuses of a sandbox call whose session process did not finish the cell.
DEAD_STATUSES = frozenset({"timeout", "killed", "crashed"})


class FamilyError(RuntimeError):
    """A family that cannot work here (a missing package or vocabulary), with the reason."""


class StreamChunk(Protocol):
    """The part of an engine chunk a transcript reads (engines/base.py `Chunk`)."""

    @property
    def text(self) -> str: ...
    @property
    def token_ids(self) -> tuple[int, ...]: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def stop(self) -> str | None: ...
    @property
    def stop_token(self) -> int | None: ...


@dataclass(frozen=True)
class ToolCall:
    """A round that ended at the family's tool-call stop.

    `code` is what to run; None when the model stopped there with no code to run
    (e.g. a code end with no code block open): the generation ends.
    """

    code: str | None


@dataclass(frozen=True)
class OutputLimits:
    """How much of a call's output the model is shown (tir.max_output_chars, then the marker)."""

    max_chars: int
    marker: str


@dataclass(frozen=True)
class ToolResult:
    """What the sandbox gave for one call, as a family formats it."""

    stdout: str
    stderr: str
    status: str  # ok | error | timeout | killed | crashed


class Transcript(Protocol):
    """One attempt's conversation as it grows, parsed incrementally."""

    def feed(self, chunk: StreamChunk) -> bool:
        """Take one streamed chunk (constant work per chunk).

        True when the attempt should end here with its answer (`tir.stop_at_boxed`
        and a complete final answer just came); the TIR loop then stops streaming.
        """
        ...

    def end_round(self, final: StreamChunk) -> ToolCall | None:
        """At a round's last chunk (already fed): the tool call it asks for, or None when
        the round did not end at the family's tool-call stop."""
        ...

    def add_tool_result(self, result: ToolResult) -> str:
        """Append the tool's reply for the last call; returns what the model is shown."""
        ...

    def next_prompt(self) -> Prompt:
        """The prompt that continues the attempt: the rendered problem and everything since."""
        ...

    @property
    def text(self) -> str:
        """The attempt's text for the record (generations.jsonl, the report)."""
        ...

    def answer(self, finished: bool) -> int | None:
        """The integer answer (before the range rule); `finished`: the model had its say (a
        closing "the answer is N" counts only then)."""
        ...


class ModelFamily(Protocol):
    """One model family: prompt, stops, sandbox prelude, and a transcript per attempt."""

    name: str
    # True when the family renders token ids: it needs an engine with `token_prompts`.
    token_prompts: bool
    # Run in every new sandbox session before the model's code (e.g. a warnings filter).
    session_prelude: str
    # The tool-call stop as the record's text shows it: once per call that ran, never in
    # the code (`</tool_call>`, `<|call|>`).
    tool_call_stop: str

    def load(self) -> None:
        """Load what the family needs (idempotent); raises FamilyError with the reason."""
        ...

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings every request needs (the family's tool-call stop)."""
        ...

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Stop token ids every request needs."""
        ...

    def render(self, problem: str) -> Prompt:
        """The problem as the model's prompt."""
        ...

    def new_transcript(self, prompt: Prompt) -> Transcript:
        """A transcript for one attempt that starts from `prompt` (a `render` result)."""
        ...

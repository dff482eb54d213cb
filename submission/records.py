"""What a run records: one row per attempt, one summary per problem.

The attempt-log columns are a superset of the public AIMO-3 attempt logs'
(docs/facts.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# Why an attempt ended: the engine's finish reasons, plus the harness's own.
AttemptEnd = Literal[
    "boxed",  # a complete \boxed{} answer appeared (and tir.stop_at_boxed)
    "stop",  # the model ended its text (EOS / stop phrase)
    "length",  # max tokens reached
    "max_code_calls",  # the code-call limit was hit and the model asked for more
    "cancelled",  # cancelled by the solver (early stop or deadline)
    "timeout",  # past the collector's per-attempt wall cap (collect.attempt_timeout_s)
    "error",  # the engine reported an error
]


@dataclass
class AttemptRecord:
    """One attempt at one problem. Mutated while the attempt runs; final once it ends."""

    problem_id: str
    attempt_num: int
    seed: int | None = None
    answer: int | None = None
    is_correct: bool | None = None
    tokens: int = 0
    time_s: float = 0.0
    code_calls: int = 0
    errors: int = 0  # code calls whose status was not "ok"
    finish_reason: AttemptEnd | None = None
    # Mean entropy (nats) of the top log-probabilities over the tokens the engine reported
    # them for (engine asked through generation.top_logprobs); None = none reported.
    entropy: float | None = None
    entropy_tokens: int = 0
    # Replay engine only: code outputs that differ from the recorded ones, and how.
    output_mismatches: int = 0
    mismatch_kinds: list[str] = field(default_factory=list)
    error_message: str | None = None
    # The sampling the engine applied, where the engine reports it (trtllm: a drafter
    # ignores top_p/top_k/min_p/repetition_penalty); empty = as asked.
    sampling: str = ""
    text: str = ""

    def add_entropies(self, entropies: tuple[float, ...]) -> None:
        """Fold a chunk's per-token entropies into the attempt's mean."""
        if not entropies:
            return
        total = (self.entropy or 0.0) * self.entropy_tokens + sum(entropies)
        self.entropy_tokens += len(entropies)
        self.entropy = total / self.entropy_tokens

    @property
    def is_none(self) -> bool:
        return self.answer is None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def row(self) -> dict[str, Any]:
        """The attempt-log row (text left out: it goes to the transcript file)."""
        data = asdict(self)
        data.pop("text")
        data["is_none"] = self.is_none
        data["mismatch_kinds"] = ",".join(self.mismatch_kinds)
        return data


@dataclass(frozen=True)
class ProblemSummary:
    """What the budget policy learns from a solved problem."""

    problem_id: str
    answer: int
    seconds: float  # wall time spent on the problem
    budget_s: float  # what it was given
    attempts: int
    answered: int  # attempts with an answer
    top_votes: int  # votes for the chosen answer
    tokens: int
    stop_reason: str
    is_correct: bool | None = None

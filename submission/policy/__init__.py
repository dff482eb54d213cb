"""Pure decision code: time budget, early stop, answer selection.

No I/O, no clocks, no engine, no sleeping: every input is an argument. The
Solver on Kaggle and the simulator call the same objects, so a policy tuned on
attempt logs is the policy that runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from submission.records import ProblemSummary


@dataclass(frozen=True)
class FinishedAttempt:
    """A finished attempt as the policies see it."""

    attempt_num: int
    answer: int | None
    tokens: int
    time_s: float
    code_calls: int = 0
    errors: int = 0
    entropy: float | None = None


@dataclass(frozen=True)
class RunningAttempt:
    attempt_num: int
    tokens: int
    elapsed_s: float


@dataclass(frozen=True)
class ProblemState:
    """One problem in progress, for the early-stop decision."""

    elapsed_s: float  # since the problem's attempts started
    budget_s: float  # the time this problem was given
    attempts: int  # attempts started
    finished: tuple[FinishedAttempt, ...]
    running: tuple[RunningAttempt, ...]


@dataclass(frozen=True)
class StopDecision:
    stop: bool
    cancel: tuple[int, ...] = ()  # attempt numbers to cancel while the rest go on
    reason: str = ""


@dataclass(frozen=True)
class RunState:
    """The whole run so far, for the budget decision."""

    elapsed_s: float  # since the run (notebook) started
    solve_budget_s: float  # the total time for solving all problems
    problems_total: int
    history: tuple[ProblemSummary, ...]  # problems done, in order

    @property
    def problems_left(self) -> int:
        return max(1, self.problems_total - len(self.history))

    @property
    def time_left_s(self) -> float:
        return self.solve_budget_s - self.elapsed_s


class BudgetPolicy(Protocol):
    def problem_seconds(self, run: RunState) -> float:
        """Seconds the next problem may take."""
        ...


class EarlyStopPolicy(Protocol):
    def decide(self, problem: ProblemState) -> StopDecision: ...


class SelectionPolicy(Protocol):
    def select(self, finished: Sequence[FinishedAttempt]) -> int | None:
        """The final answer from finished attempts (answers already range-checked)."""
        ...


@dataclass(frozen=True)
class Policy:
    """Everything the Solver decides, bundled: attempts per problem and the three policies."""

    name: str
    attempts: int
    budget: BudgetPolicy
    early_stop: EarlyStopPolicy
    selection: SelectionPolicy

"""Public AIMO harnesses' policies, implemented faithfully, to measure ours against.

- AIMO-2 winner (NemoSkills): 16 attempts, stop when 4 of the first 5 finished
  agree, 350 s per problem plus a bank of unused time (at most +210 s).
- AIMO-3 top family: 8 attempts, stop at 4 agreeing, budget = time left minus
  a reserve for the problems left, clamped to [300, 900] s.
- AIMO-3 runner-up: the same, and stop when the leader can't be caught.
- plain: 8 attempts all run to the end, a fair share of the time left.
All select by plain majority vote.
"""

from __future__ import annotations

from dataclasses import dataclass

from submission.policy import Policy, ProblemState, RunState, StopDecision
from submission.policy.early_stop import AgreeOrUncatchable
from submission.policy.selection import MajorityVote, vote_counts


@dataclass(frozen=True)
class BaseAndBank:
    """`base_s` per problem plus the time earlier problems left unused, at most `max_extra_s`."""

    base_s: float = 350.0
    max_extra_s: float = 210.0

    def problem_seconds(self, run: RunState) -> float:
        bank = sum(self.base_s - done.seconds for done in run.history)
        return self.base_s + min(max(bank, 0.0), self.max_extra_s)


@dataclass(frozen=True)
class ReserveClamped:
    """Time left minus `reserve_s` for each problem still to come, clamped to [min, max]."""

    reserve_s: float = 300.0
    min_problem_s: float = 300.0
    max_problem_s: float = 900.0

    def problem_seconds(self, run: RunState) -> float:
        share = run.time_left_s - self.reserve_s * (run.problems_left - 1)
        return min(max(share, self.min_problem_s), self.max_problem_s)


@dataclass(frozen=True)
class FairShare:
    """The time left divided equally among the problems left."""

    def problem_seconds(self, run: RunState) -> float:
        return max(0.0, run.time_left_s / run.problems_left)


@dataclass(frozen=True)
class FirstFinishedAgree:
    """Stop when `agree` of the first `window` finished attempts agree."""

    agree: int = 4
    window: int = 5

    def decide(self, problem: ProblemState) -> StopDecision:
        if not problem.running:
            return StopDecision(True, reason="all finished")
        counts = vote_counts(problem.finished[: self.window]).most_common(1)
        if counts and counts[0][1] >= self.agree:
            return StopDecision(True, reason=f"{counts[0][1]} of first {self.window} agree")
        return StopDecision(False)


@dataclass(frozen=True)
class RunToEnd:
    """Never stop early: every attempt runs until it finishes or the deadline."""

    def decide(self, problem: ProblemState) -> StopDecision:
        return StopDecision(not problem.running, reason="all finished")


def anchor_policies() -> list[Policy]:
    return [
        Policy("aimo2-winner", 16, BaseAndBank(), FirstFinishedAgree(), MajorityVote()),
        Policy(
            "aimo3-top",
            8,
            ReserveClamped(),
            AgreeOrUncatchable(agree=4, stop_when_uncatchable=False),
            MajorityVote(),
        ),
        Policy(
            "aimo3-runner-up",
            8,
            ReserveClamped(),
            AgreeOrUncatchable(agree=4, stop_when_uncatchable=True),
            MajorityVote(),
        ),
        Policy("plain", 8, FairShare(), RunToEnd(), MajorityVote()),
    ]

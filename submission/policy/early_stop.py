"""Early stop: is the vote settled?"""

from __future__ import annotations

from dataclasses import dataclass

from submission.policy import ProblemState, StopDecision
from submission.policy.selection import vote_counts


@dataclass(frozen=True)
class AgreeOrUncatchable:
    """Stop when `agree` finished attempts agree, or when the leader can't be caught."""

    agree: int = 4
    stop_when_uncatchable: bool = True

    def decide(self, problem: ProblemState) -> StopDecision:
        counts = vote_counts(problem.finished).most_common(2)
        if not problem.running:
            return StopDecision(True, reason="all finished")
        if not counts:
            return StopDecision(False)
        leader = counts[0][1]
        second = counts[1][1] if len(counts) > 1 else 0
        if leader >= self.agree:
            return StopDecision(True, reason=f"{leader} agree")
        if self.stop_when_uncatchable and second + len(problem.running) < leader:
            return StopDecision(True, reason="leader uncatchable")
        return StopDecision(False)

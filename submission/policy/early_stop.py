"""Early stop: is the vote settled, and which attempts are not worth their share of the engine?"""

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


@dataclass(frozen=True)
class SettledVote:
    """Our default early stop: four rules on votes and progress, plus narrowing to what can finish.

    1. Stop when `agree` finished attempts agree, or the leader can't be caught.
    2. Once `late_fraction` of the budget has passed, a lead of one vote settles it.
    3. Give up when every running attempt has decoded `give_up_tokens`: attempts
       that long almost never end with an answer.
    4. Narrow: cancel attempts (highest numbers first, never below `min_running`)
       until each one left is projected to decode `narrow_tokens` by the
       deadline; on a slow engine fewer streams, each faster, can still finish.
    The projection uses the running attempts' measured decode rate and the
    engine's slow-down per extra stream, `contention` (rate = R1 / (1 + a*(n-1))).
    """

    agree: int = 5
    stop_when_uncatchable: bool = True
    late_fraction: float = 0.5
    give_up_tokens: int = 24_000
    narrow_tokens: int = 40_000
    min_running: int = 3
    contention: float = 0.087

    def decide(self, problem: ProblemState) -> StopDecision:
        running = problem.running
        if not running:
            return StopDecision(True, reason="all finished")
        counts = vote_counts(problem.finished).most_common(2)
        leader = counts[0][1] if counts else 0
        second = counts[1][1] if len(counts) > 1 else 0
        if leader >= self.agree:
            return StopDecision(True, reason=f"{leader} agree")
        if self.stop_when_uncatchable and leader and second + len(running) < leader:
            return StopDecision(True, reason="leader uncatchable")
        late = problem.elapsed_s >= self.late_fraction * problem.budget_s
        if late and leader > second:
            return StopDecision(True, reason="lead late in the budget")
        if min(a.tokens for a in running) >= self.give_up_tokens:
            return StopDecision(True, reason="running attempts too long")
        return StopDecision(False, cancel=self._narrow(problem))

    def _narrow(self, problem: ProblemState) -> tuple[int, ...]:
        running = problem.running
        decoded = max(a.tokens for a in running)
        if decoded <= 0 or problem.elapsed_s <= 0:
            return ()  # no rate measured yet
        n = len(running)
        single_stream_rate = decoded / problem.elapsed_s * (1 + self.contention * (n - 1))
        seconds_left = max(0.0, problem.budget_s - problem.elapsed_s)
        keep = n
        while keep > self.min_running:
            rate = single_stream_rate / (1 + self.contention * (keep - 1))
            if decoded + rate * seconds_left >= self.narrow_tokens:
                break
            keep -= 1
        by_number = sorted((a.attempt_num for a in running), reverse=True)
        return tuple(by_number[: n - keep])

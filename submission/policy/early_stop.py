"""Early stop: is the vote settled, and which attempts are not worth their share of the engine?"""

from __future__ import annotations

import math
from dataclasses import dataclass

from submission.config import EarlyStopConfig
from submission.policy import ProblemState, StopDecision
from submission.policy.selection import vote_counts


@dataclass(frozen=True)
class AgreeOrUncatchable:
    """Stop when `agree` finished attempts agree, or when the leader can't be caught."""

    agree: int
    stop_when_uncatchable: bool

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
    """Our default early stop: rules on votes and progress, plus narrowing to what can finish.

    1. Stop when `agree` finished attempts agree, or the leader can't be caught.
       Patience: while the running attempts are projected to reach
       `patient_tokens` by the deadline with every stream kept (time is ample),
       only a leader that can't be caught settles it (rule 1's agreement and
       rule 2 wait): later, longer attempts still vote, and on the logs they
       are right slightly more often.
    2. A lead of one vote settles it once `late_fraction` of the budget has
       passed, or at once when the budget is tight: when even the streams kept
       by narrowing can't decode `give_up_tokens` by the deadline, a second vote
       would cost the problems still to come more than it can fix here.
    3. Give up when every running attempt has decoded `give_up_tokens`: attempts
       that long almost never end with an answer.
    4. Narrow: cancel attempts (highest numbers first, never below `min_running`)
       until each one left is projected to decode `narrow_tokens` by the
       deadline; on a slow engine fewer streams, each faster, can still finish.
    The projection uses the running attempts' measured decode rate and the
    engine's slow-down per extra stream, `contention` (rate = R1 / (1 + a*(n-1))).
    """

    config: EarlyStopConfig  # the thresholds, documented (with their defaults) in config.py

    def decide(self, problem: ProblemState) -> StopDecision:
        running = problem.running
        if not running:
            return StopDecision(True, reason="all finished")
        counts = vote_counts(problem.finished).most_common(2)
        leader = counts[0][1] if counts else 0
        second = counts[1][1] if len(counts) > 1 else 0
        if self.config.stop_when_uncatchable and leader and second + len(running) < leader:
            return StopDecision(True, reason="leader uncatchable")
        keep, reach = self._narrowed(problem)
        patient = self._reach(problem, len(running)) >= self.config.patient_tokens
        if leader >= self.config.agree and not patient:
            return StopDecision(True, reason=f"{leader} agree")
        late = problem.elapsed_s >= self.config.late_fraction * problem.budget_s
        if not patient and leader > second and (late or reach < self.config.give_up_tokens):
            return StopDecision(
                True, reason="lead late in the budget" if late else "lead, budget tight"
            )
        if min(a.tokens for a in running) >= self.config.give_up_tokens:
            return StopDecision(True, reason="running attempts too long")
        by_number = sorted((a.attempt_num for a in running), reverse=True)
        return StopDecision(False, cancel=tuple(by_number[: len(running) - keep]))

    def _narrowed(self, problem: ProblemState) -> tuple[int, float]:
        """How many streams to keep, and the tokens each kept one is projected to reach."""
        keep = len(problem.running)
        while (
            keep > self.config.min_running
            and self._reach(problem, keep) < self.config.narrow_tokens
        ):
            keep -= 1
        return keep, self._reach(problem, keep)

    def _reach(self, problem: ProblemState, streams: int) -> float:
        """Tokens the furthest running attempt is projected to reach by the deadline.

        The rate is measured on the running attempts (n of them), the slow-down
        of n streams undone and that of `streams` applied.
        """
        n = len(problem.running)
        decoded = max(a.tokens for a in problem.running)
        if decoded <= 0 or problem.elapsed_s <= 0:
            return math.inf  # no rate measured yet
        contention = self.config.contention
        single_stream_rate = decoded / problem.elapsed_s * (1 + contention * (n - 1))
        seconds_left = max(0.0, problem.budget_s - problem.elapsed_s)
        return decoded + single_stream_rate / (1 + contention * (streams - 1)) * seconds_left

"""Time budget: how long the next problem may take."""

from __future__ import annotations

from dataclasses import dataclass

from submission.policy import RunState


@dataclass(frozen=True)
class FairShareWithBank:
    """A base of `base_shares` fair shares plus the bank of saved time, at most `stretch` shares.

    The fair share at the start is the usable budget (after the safety margin)
    over all problems. The bank is the time the run is ahead of that pace. A
    problem gets `base_shares` starting shares plus the bank, but at most
    `stretch` times an equal share of the time now left: a slow engine gets a
    fixed cut per problem (time spent on hopeless problems is capped), a fast
    one lets contested problems draw on what easy ones left. Never more than is
    usable, whatever the clamps [min_problem_s, max_problem_s] say.
    """

    safety_margin_s: float = 600.0
    min_problem_s: float = 60.0
    max_problem_s: float = 3600.0
    base_shares: float = 1.8
    stretch: float = 4.0

    def problem_seconds(self, run: RunState) -> float:
        usable = run.time_left_s - self.safety_margin_s
        share_now = usable / run.problems_left
        share_at_start = (run.solve_budget_s - self.safety_margin_s) / run.problems_total
        bank = share_at_start * len(run.history) - run.elapsed_s
        seconds = min(self.base_shares * share_at_start + max(0.0, bank), self.stretch * share_now)
        return max(0.0, min(max(seconds, self.min_problem_s), self.max_problem_s, usable))

"""Time budget: how long the next problem may take."""

from __future__ import annotations

from dataclasses import dataclass

from submission.config import BudgetConfig
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

    config: BudgetConfig  # the constants, documented (with their defaults) in config.py

    def problem_seconds(self, run: RunState) -> float:
        c = self.config
        usable = run.time_left_s - c.safety_margin_s
        share_now = usable / run.problems_left
        share_at_start = (run.solve_budget_s - c.safety_margin_s) / run.problems_total
        bank = share_at_start * len(run.history) - run.elapsed_s
        seconds = min(c.base_shares * share_at_start + max(0.0, bank), c.stretch * share_now)
        return max(0.0, min(max(seconds, c.min_problem_s), c.max_problem_s, usable))

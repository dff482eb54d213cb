"""Time budget: how long the next problem may take."""

from __future__ import annotations

from dataclasses import dataclass

from submission.policy import RunState


@dataclass(frozen=True)
class FairShareWithBank:
    """An equal share of the time left (after a safety margin), clamped to [min, max]."""

    safety_margin_s: float = 600.0
    min_problem_s: float = 60.0
    max_problem_s: float = 900.0

    def problem_seconds(self, run: RunState) -> float:
        usable = run.time_left_s - self.safety_margin_s
        share = usable / run.problems_left
        # Never promise more than is usable, even when the minimum says otherwise.
        return max(0.0, min(max(share, self.min_problem_s), self.max_problem_s, usable))

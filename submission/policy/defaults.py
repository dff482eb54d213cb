"""The default policy, built from the config (docs/policy.md explains each rule)."""

from __future__ import annotations

from submission.config import Config
from submission.policy import Policy
from submission.policy.budget import FairShareWithBank
from submission.policy.early_stop import SettledVote
from submission.policy.selection import ErrorWeightedVote


def default_policy(config: Config) -> Policy:
    budget, stop = config.budget, config.early_stop
    return Policy(
        name="default",
        attempts=config.solver.attempts,
        budget=FairShareWithBank(
            safety_margin_s=budget.safety_margin_s,
            min_problem_s=budget.min_problem_s,
            max_problem_s=budget.max_problem_s,
            base_shares=budget.base_shares,
            stretch=budget.stretch,
        ),
        early_stop=SettledVote(
            agree=stop.agree,
            stop_when_uncatchable=stop.stop_when_uncatchable,
            late_fraction=stop.late_fraction,
            give_up_tokens=stop.give_up_tokens,
            narrow_tokens=stop.narrow_tokens,
            min_running=stop.min_running,
            contention=stop.contention,
        ),
        selection=ErrorWeightedVote(error_power=stop.error_power),
    )

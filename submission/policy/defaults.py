"""The default policy, built from the config."""

from __future__ import annotations

from submission.config import Config
from submission.policy import Policy
from submission.policy.budget import FairShareWithBank
from submission.policy.early_stop import AgreeOrUncatchable
from submission.policy.selection import MajorityVote


def default_policy(config: Config) -> Policy:
    return Policy(
        name="default",
        attempts=config.solver.attempts,
        budget=FairShareWithBank(
            safety_margin_s=config.budget.safety_margin_s,
            min_problem_s=config.budget.min_problem_s,
            max_problem_s=config.budget.max_problem_s,
        ),
        early_stop=AgreeOrUncatchable(
            agree=config.early_stop.agree,
            stop_when_uncatchable=config.early_stop.stop_when_uncatchable,
        ),
        selection=MajorityVote(),
    )

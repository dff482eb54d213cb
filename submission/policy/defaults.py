"""The default policy, built from the config (docs/policy.md explains each rule)."""

from __future__ import annotations

from submission.config import Config
from submission.policy import Policy
from submission.policy.budget import FairShareWithBank
from submission.policy.early_stop import SettledVote
from submission.policy.selection import ErrorWeightedVote


def default_policy(config: Config) -> Policy:
    return Policy(
        name="default",
        attempts=config.solver.attempts,
        budget=FairShareWithBank(config.budget),
        early_stop=SettledVote(config.early_stop),
        selection=ErrorWeightedVote(error_power=config.early_stop.error_power),
    )

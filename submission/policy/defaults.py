"""The default policy, built from the config (docs/policy.md explains each rule)."""

from __future__ import annotations

from submission.config import Config
from submission.policy import Policy, SelectionPolicy
from submission.policy.budget import FairShareWithBank
from submission.policy.early_stop import SettledVote
from submission.policy.selection import EntropyWeightedVote, ErrorWeightedVote


def default_policy(config: Config) -> Policy:
    return Policy(
        name="default",
        attempts=config.solver.attempts,
        budget=FairShareWithBank(config.budget),
        early_stop=SettledVote(config.early_stop),
        selection=selection_policy(config),
    )


def selection_policy(config: Config) -> SelectionPolicy:
    """early_stop.selection: the error-weighted vote, or the entropy-weighted one."""
    if config.early_stop.selection == "entropy":
        return EntropyWeightedVote()
    return ErrorWeightedVote(error_power=config.early_stop.error_power)

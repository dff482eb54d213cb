"""Answer selection: a (weighted) majority vote with a deterministic tie-break."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from submission.policy import FinishedAttempt


def vote_counts(finished: Sequence[FinishedAttempt]) -> Counter[int]:
    return Counter(a.answer for a in finished if a.answer is not None)


def _first_seen(finished: Sequence[FinishedAttempt]) -> dict[int, int]:
    first: dict[int, int] = {}
    for order, attempt in enumerate(finished):
        if attempt.answer is not None:
            first.setdefault(attempt.answer, order)
    return first


@dataclass(frozen=True)
class MajorityVote:
    """Most votes wins; ties go to the answer whose first vote came earliest (then the smaller)."""

    def select(self, finished: Sequence[FinishedAttempt]) -> int | None:
        counts = vote_counts(finished)
        if not counts:
            return None
        first_seen = _first_seen(finished)
        return min(counts, key=lambda ans: (-counts[ans], first_seen[ans], ans))


@dataclass(frozen=True)
class ErrorWeightedVote:
    """Each vote weighs (1 + code errors) ** -error_power; ties as in MajorityVote.

    An attempt whose code kept failing reasoned on less evidence; on the hard50
    log wrong answers average 1.95 code errors and right ones 0.66.
    """

    error_power: float  # config.early_stop.error_power

    def select(self, finished: Sequence[FinishedAttempt]) -> int | None:
        weights: dict[int, float] = {}
        for a in finished:
            if a.answer is not None:
                weights[a.answer] = weights.get(a.answer, 0.0) + (1 + a.errors) ** -self.error_power
        if not weights:
            return None
        first_seen = _first_seen(finished)
        return min(weights, key=lambda ans: (-weights[ans], first_seen[ans], ans))

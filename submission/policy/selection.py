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


@dataclass(frozen=True)
class EntropyWeightedVote:
    """Each vote weighs 1 / its attempt's mean entropy: the surer the model, the more it counts.

    The rule of the AIMO-3 anchor notebook that served gpt-oss-120b with logprobs
    (AndreasBis/AIMO3-Solution@c01cf46,
    `code/inference/gpt-oss-120b-with-tools/aimo-3-gpt-oss-120b-with-tools-version-16.ipynb`,
    `_compute_mean_entropy` and `_select_answer`): the mean over generated tokens of
    -sum p log p over the top-5 log-probabilities, weight `1 / max(entropy, 1e-9)`; an
    attempt with no entropy weighs 0 (the notebook's `inf`). The weights' unit (bits there,
    nats here) scales every weight alike, so the choice is the same. When no answered
    attempt has an entropy (an engine without logprobs) it is the plain majority. Ties as in
    MajorityVote.
    """

    def select(self, finished: Sequence[FinishedAttempt]) -> int | None:
        answered = [a for a in finished if a.answer is not None]
        if not answered:
            return None
        if all(a.entropy is None for a in answered):
            return MajorityVote().select(finished)
        weights: dict[int, float] = {}
        for a in answered:
            weight = 0.0 if a.entropy is None else 1.0 / max(a.entropy, 1e-9)
            weights[a.answer] = weights.get(a.answer, 0.0) + weight  # type: ignore[index]
        first_seen = _first_seen(finished)
        return min(weights, key=lambda ans: (-weights[ans], first_seen[ans], ans))

"""Answer selection: majority vote with a deterministic tie-break."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from submission.policy import FinishedAttempt


def vote_counts(finished: Sequence[FinishedAttempt]) -> Counter[int]:
    return Counter(a.answer for a in finished if a.answer is not None)


@dataclass(frozen=True)
class MajorityVote:
    """Most votes wins; ties go to the answer whose first vote came earliest (then the smaller)."""

    def select(self, finished: Sequence[FinishedAttempt]) -> int | None:
        counts = vote_counts(finished)
        if not counts:
            return None
        first_seen: dict[int, int] = {}
        for order, attempt in enumerate(finished):
            if attempt.answer is not None:
                first_seen.setdefault(attempt.answer, order)
        return min(counts, key=lambda ans: (-counts[ans], first_seen[ans], ans))

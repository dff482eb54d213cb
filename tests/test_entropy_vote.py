"""The logprob vote (issue 19 item 6): each vote weighs 1 / its attempt's mean entropy.

The anchor is AndreasBis/AIMO3-Solution@c01cf46's gpt-oss-120b notebook (version 16):
`_compute_mean_entropy` over the top-5 logprobs, `_select_answer` weighing 1/entropy. The
attempts below are rows of the real hard50 attempt log's shape (answers and entropies of
problem 2e2ccb's first attempts, submission/data/synthetic_attempts.csv when ../shared is absent).
"""

from __future__ import annotations

import math

import pytest

from submission.config import load_config
from submission.policy import FinishedAttempt
from submission.policy.defaults import default_policy
from submission.policy.selection import EntropyWeightedVote, ErrorWeightedVote, MajorityVote
from submission.records import AttemptRecord


def attempt(num: int, answer: int | None, entropy: float | None) -> FinishedAttempt:
    return FinishedAttempt(num, answer, tokens=8000, time_s=100.0, entropy=entropy)


def anchor_select(results: list[tuple[int | None, float]]) -> int | None:
    """The anchor's `_select_answer`, restated: sum 1/max(entropy, 1e-9) per answer, best first
    (a stable sort: ties keep the order of completion)."""
    weights: dict[int, float] = {}
    for answer, entropy in results:
        if answer is not None:
            weights[answer] = weights.get(answer, 0.0) + 1.0 / max(entropy, 1e-9)
    if not weights:
        return None
    return sorted(weights.items(), key=lambda kv: kv[1], reverse=True)[0][0]


# (answer, mean entropy) in the order the attempts finished: 876 has two confident votes,
# 1186 three unsure ones. A plain majority says 1186; the entropy vote says 876.
FINISHED = [(1186, 0.70), (876, 0.30), (1186, 0.72), (876, 0.31), (1186, 0.69), (None, 0.60)]


def test_the_surer_answer_wins_over_the_larger_count_as_in_the_anchor() -> None:
    finished = [attempt(i, a, e) for i, (a, e) in enumerate(FINISHED)]
    assert MajorityVote().select(finished) == 1186
    assert EntropyWeightedVote().select(finished) == anchor_select(FINISHED) == 876


def test_the_unit_of_the_entropy_does_not_change_the_choice() -> None:
    in_bits = [attempt(i, a, e / math.log(2)) for i, (a, e) in enumerate(FINISHED)]
    assert EntropyWeightedVote().select(in_bits) == 876


def test_without_entropies_it_is_the_plain_majority_and_a_missing_one_weighs_nothing() -> None:
    plain = [attempt(i, a, None) for i, (a, _) in enumerate(FINISHED)]
    assert EntropyWeightedVote().select(plain) == MajorityVote().select(plain) == 1186
    mixed = [attempt(0, 5, None), attempt(1, 5, None), attempt(2, 7, 0.5)]
    assert EntropyWeightedVote().select(mixed) == 7
    assert EntropyWeightedVote().select([attempt(0, None, 0.4)]) is None


def test_the_config_picks_the_vote() -> None:
    assert isinstance(default_policy(load_config()).selection, ErrorWeightedVote)
    config = load_config("aimo3", None, ["early_stop.selection=entropy"])
    assert isinstance(default_policy(config).selection, EntropyWeightedVote)


def test_the_attempt_record_keeps_the_mean_over_every_reported_token() -> None:
    record = AttemptRecord("p", 0)
    record.add_entropies(())
    assert record.entropy is None
    record.add_entropies((0.2, 0.4))
    record.add_entropies((0.9,))
    assert record.entropy == pytest.approx(0.5)
    assert record.entropy_tokens == 3
    assert record.row()["entropy"] == pytest.approx(0.5)


async def test_the_tir_loop_folds_the_engines_entropies_into_the_record() -> None:
    from submission.answer import AnswerRange
    from submission.config import TirConfig, load_config
    from submission.engines.base import Chunk, SamplingParams
    from submission.families.registry import create_family
    from submission.tir import TirLoop

    class Engine:
        name, greedy, token_prompts = "scripted", False, False

        async def stream(self, prompt, params):
            yield Chunk("The answer is ", 2, token_entropies=(0.1, 0.3))
            yield Chunk("\\boxed{42}", 3, token_entropies=(0.2, 0.2, 0.2))
            yield Chunk("", 0, "stop", stop="<|im_end|>")

    family = create_family(load_config("aimo3", None, ["prompt.family=tora"]))
    loop = TirLoop(Engine(), None, family, TirConfig(), AnswerRange(0, 99_999))  # type: ignore[arg-type]
    record = AttemptRecord("p", 0)
    await loop.run_attempt(record, "prompt", SamplingParams(max_tokens=100), "s")
    assert record.answer == 42
    assert record.entropy == pytest.approx(0.2)
    assert record.entropy_tokens == 5

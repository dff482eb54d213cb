"""The pure policies: budget, early stop, selection, and the anchors' versions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from submission.config import BudgetConfig, EarlyStopConfig, load_config
from submission.policy import FinishedAttempt, ProblemState, RunningAttempt, RunState
from submission.policy.anchors import (
    BaseAndBank,
    FairShare,
    FirstFinishedAgree,
    ReserveClamped,
    RunToEnd,
    anchor_policies,
)
from submission.policy.budget import FairShareWithBank
from submission.policy.defaults import default_policy
from submission.policy.early_stop import AgreeOrUncatchable, SettledVote
from submission.policy.selection import ErrorWeightedVote, MajorityVote
from submission.records import ProblemSummary


def done(num: int, answer: int | None, tokens: int = 1000, errors: int = 0) -> FinishedAttempt:
    return FinishedAttempt(num, answer, tokens, time_s=10.0, errors=errors)


def state(
    answers: list[int | None],
    running: int,
    elapsed: float = 10.0,
    budget: float = 100.0,
    tokens: int = 100,
    attempts: int | None = None,
) -> ProblemState:
    finished = tuple(done(i, a) for i, a in enumerate(answers))
    run = tuple(RunningAttempt(len(answers) + i, tokens, elapsed) for i in range(running))
    return ProblemState(elapsed, budget, attempts or len(answers) + running, finished, run)


def summary(seconds: float) -> ProblemSummary:
    return ProblemSummary("p", 1, seconds, 100.0, 8, 8, 4, 1000, "x")


def run_state(elapsed: float, total: int = 10, done_n: int = 0, budget: float = 1000.0) -> RunState:
    return RunState(elapsed, budget, total, tuple(summary(1.0) for _ in range(done_n)))


# --- budget -------------------------------------------------------------------------------


@given(
    elapsed=st.floats(0, 20_000),
    done_n=st.integers(0, 60),
    stretch=st.floats(0.5, 5),
    margin=st.floats(0, 1000),
)
def test_budget_never_promises_more_than_is_usable(
    elapsed: float, done_n: int, stretch: float, margin: float
) -> None:
    policy = FairShareWithBank(BudgetConfig(safety_margin_s=margin, stretch=stretch))
    run = run_state(elapsed, total=50, done_n=done_n, budget=17_400.0)
    seconds = policy.problem_seconds(run)
    assert 0.0 <= seconds <= max(0.0, run.time_left_s - margin)


def test_budget_is_a_base_plus_the_bank_capped_by_a_stretched_share() -> None:
    policy = FairShareWithBank(
        BudgetConfig(safety_margin_s=100.0, min_problem_s=0.0, base_shares=1.5, stretch=2.0)
    )
    # 900 usable seconds over 10 problems: a share of 90; the base is 1.5 shares.
    assert policy.problem_seconds(run_state(0.0)) == 135.0
    # Behind the pace (5 problems in 500 s): no bank, still the base (a fixed cut) ...
    assert policy.problem_seconds(run_state(500.0, done_n=5)) == 135.0
    # ... until 2 shares of what is left are less.
    assert policy.problem_seconds(run_state(600.0, done_n=5)) == 2 * 300 / 5
    # Ahead of it (5 problems in 100 s): base + 350 s bank, capped at 2 shares of 800 / 5.
    assert policy.problem_seconds(run_state(100.0, done_n=5)) == 2 * 800 / 5
    # Ahead by a little: base + bank.
    assert policy.problem_seconds(run_state(400.0, done_n=5)) == 135.0 + 50.0
    assert (
        FairShareWithBank(BudgetConfig(max_problem_s=50.0)).problem_seconds(run_state(0.0)) == 50.0
    )


# --- early stop ---------------------------------------------------------------------------


FAST = 20_000  # tokens per stream after 10 s: far more than give_up_tokens by the deadline


def test_settled_vote_stops_on_agreement_or_an_uncatchable_leader() -> None:
    policy = SettledVote(EarlyStopConfig(agree=3))
    assert policy.decide(state([5, 5, 5], running=5)).reason == "3 agree"
    assert not policy.decide(state([5, 5, 6], running=5, tokens=FAST)).stop
    assert policy.decide(state([5, 5], running=1)).reason == "leader uncatchable"
    assert policy.decide(state([5, 5, None], running=0)).reason == "all finished"


def test_settled_vote_is_patient_while_time_is_ample() -> None:
    policy = SettledVote(EarlyStopConfig(agree=3, late_fraction=0.5, patient_tokens=30_000))
    # 1,000 tokens in 10 s with 90 s left: each running attempt reaches 10,000, not 30,000.
    assert policy.decide(state([5, 5, 5], running=5, tokens=1000)).reason == "3 agree"
    # 5,000 tokens in 10 s: it reaches 50,000, so three votes wait for the other five ...
    assert not policy.decide(state([5, 5, 5], running=5, tokens=5000)).stop
    # ... and so does a lead of one late in the budget (20,000 in 60 s reaches 33,333); an
    # uncatchable leader still settles it.
    assert not policy.decide(state([5], running=5, elapsed=60, tokens=20_000)).stop
    assert policy.decide(state([5, 5, 5], running=2, tokens=5000)).reason == "leader uncatchable"
    # Off: patient_tokens beyond any reach restores the agreement rule.
    hasty = SettledVote(EarlyStopConfig(agree=3, patient_tokens=10**9))
    assert hasty.decide(state([5, 5, 5], running=5, tokens=5000)).reason == "3 agree"


def test_settled_vote_takes_a_lead_late_in_the_budget() -> None:
    policy = SettledVote(EarlyStopConfig(late_fraction=0.5))
    # 10k tokens by 40 s: narrowed to 3, each still reaches 24k by the deadline (not tight).
    assert not policy.decide(state([5], running=10, elapsed=40, tokens=10_000)).stop
    assert policy.decide(state([5], running=10, elapsed=50, tokens=10_000)).stop
    assert not policy.decide(state([5, 6], running=10, elapsed=90)).stop  # a tie is no lead


def test_settled_vote_takes_a_lead_at_once_when_the_budget_is_tight() -> None:
    policy = SettledVote(
        EarlyStopConfig(give_up_tokens=24_000, narrow_tokens=40_000, min_running=3)
    )
    # 10 s into 100 s: a fast engine's kept streams can still reach 24k tokens, so wait ...
    assert not policy.decide(state([5], running=10, tokens=FAST)).stop
    # ... a slow one's can't (100 tokens in 10 s), so the first answer settles it.
    decision = policy.decide(state([5], running=10, tokens=100))
    assert decision.stop and decision.reason == "lead, budget tight"
    assert not policy.decide(state([5, 6], running=10, tokens=100)).stop  # a tie is no lead
    assert not policy.decide(state([], running=10, tokens=100)).stop  # nor is no answer
    # Tight is judged on the streams narrowing keeps: R1 = (tokens / 10 s) * (1 + 0.087 * 9),
    # 3 streams at R1 / 1.174 for the 90 s left: about 14.7 x tokens, short of 40k.
    for tokens, tight in ((1500, True), (2000, False)):
        reach_3 = tokens + tokens / 10 * (1 + 0.087 * 9) / (1 + 0.087 * 2) * 90
        assert reach_3 < 40_000 and (reach_3 < 24_000) == tight
        assert policy.decide(state([5], running=10, tokens=tokens)).stop == tight


def test_settled_vote_gives_up_on_attempts_that_ran_too_long() -> None:
    policy = SettledVote(EarlyStopConfig(give_up_tokens=5000))
    assert not policy.decide(state([], running=4, tokens=4999)).stop
    assert policy.decide(state([], running=4, tokens=5000)).stop


def test_narrowing_keeps_what_can_finish_and_cancels_the_highest_numbers() -> None:
    policy = SettledVote(EarlyStopConfig(narrow_tokens=10_000, min_running=3, contention=0.1))
    # 16 streams at 10 tok/s each after 10 s: R1 = 10 * 2.5 = 25 tok/s; 90 s left.
    slow = state([], running=16, elapsed=10.0, budget=100.0, tokens=100)
    decision = policy.decide(slow)
    assert not decision.stop
    # Even 3 streams (25 / 1.2 tok/s) reach 100 + 1875 tokens < 10k: keep the minimum.
    assert sorted(decision.cancel) == list(range(3, 16))
    # A fast engine keeps them all: 16 streams at 200 tok/s reach 2000 + 18 000 tokens.
    fast = state([], running=16, elapsed=10.0, budget=100.0, tokens=2000)
    assert policy.decide(fast).cancel == ()
    # Narrow to exactly what reaches the target: R1 = 100 * 2.5 = 250 tok/s, 90 s left.
    middle = state([], running=16, elapsed=10.0, budget=100.0, tokens=1000)
    keep = 16 - len(policy.decide(middle).cancel)
    reach = [1000 + 250 / (1 + 0.1 * (k - 1)) * 90 for k in (keep, keep + 1)]
    assert reach[0] >= 10_000 > reach[1]
    # No rate measured yet: nothing to narrow on.
    assert policy.decide(state([], running=16, elapsed=0.0, tokens=0)).cancel == ()


def test_anchor_early_stops() -> None:
    first = FirstFinishedAgree(agree=4, window=5)
    assert first.decide(state([5, 5, 5, 5], running=12)).stop
    assert first.decide(state([5, 6, 5, 5, 5], running=11)).stop
    assert not first.decide(state([5, 6, 7, 5, 5, 5], running=10)).stop  # 3 of the first 5
    assert not RunToEnd().decide(state([5] * 10, running=1)).stop
    top = AgreeOrUncatchable(agree=4, stop_when_uncatchable=False)
    assert not top.decide(state([5, 5], running=1)).stop
    assert (
        AgreeOrUncatchable(agree=4, stop_when_uncatchable=True)
        .decide(state([5, 5], running=1))
        .stop
    )


# --- selection ----------------------------------------------------------------------------


def test_majority_and_its_tie_break() -> None:
    assert MajorityVote().select([done(0, 3), done(1, 4), done(2, 4)]) == 4
    assert MajorityVote().select([done(0, 9), done(1, 4), done(2, 4), done(3, 9)]) == 9
    assert MajorityVote().select([done(0, None)]) is None


def test_error_weighted_vote_discounts_attempts_whose_code_failed() -> None:
    vote = ErrorWeightedVote(error_power=1.0)
    clean = [done(0, 7)]
    failing = [done(1, 8, errors=3), done(2, 8, errors=3)]  # 2 votes of 1/4 each
    assert vote.select(failing + clean) == 7
    assert MajorityVote().select(failing + clean) == 8


@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 5)), st.integers(0, 5)), max_size=12))
def test_error_power_zero_is_plain_majority(rows: list[tuple[int | None, int]]) -> None:
    finished = [done(i, a, errors=e) for i, (a, e) in enumerate(rows)]
    assert ErrorWeightedVote(error_power=0.0).select(finished) == MajorityVote().select(finished)


# --- anchors' budgets and the bundles -----------------------------------------------------


def test_anchor_budgets() -> None:
    bank = BaseAndBank(base_s=350.0, max_extra_s=210.0)
    history = (summary(100.0), summary(300.0))  # 300 s unused
    assert bank.problem_seconds(RunState(400.0, 17_400.0, 50, history)) == 560.0
    over = (summary(500.0),)
    assert bank.problem_seconds(RunState(500.0, 17_400.0, 50, over)) == 350.0
    reserve = ReserveClamped(reserve_s=300.0, min_problem_s=300.0, max_problem_s=900.0)
    assert (
        reserve.problem_seconds(RunState(0.0, 17_400.0, 50, ())) == 900.0
    )  # 17 400 - 49 * 300 = 2700, clamped
    assert reserve.problem_seconds(RunState(15_000.0, 17_400.0, 50, ())) == 300.0
    assert FairShare().problem_seconds(RunState(400.0, 1000.0, 3, (summary(1.0),))) == 300.0


def test_default_and_anchor_bundles() -> None:
    config = load_config()
    policy = default_policy(config)
    assert policy.attempts == config.solver.attempts
    assert policy.early_stop.config is config.early_stop  # type: ignore[attr-defined]
    assert policy.budget.config is config.budget  # type: ignore[attr-defined]
    names = [p.name for p in anchor_policies()]
    assert names == ["aimo2-winner", "aimo3-top", "aimo3-runner-up", "plain"]
    assert [p.attempts for p in anchor_policies()] == [16, 8, 8, 8]

"""A discrete-event simulation of the Solver's time behaviour over an attempt log.

It drives the very `Policy` objects the Solver uses. Per problem, K attempts drawn from the log
start together and share the engine: with n streams active each decodes at
R1 / (1 + a*(n-1)) tokens/s, so cancelling some speeds up the rest. An attempt
finishes once it has decoded its recorded token count; attempts cut off in the
recording (is_none=1) never finish. Problems come in a random order against
one global budget; the early-stop policy is consulted on every completion and
every `tick_s`, the budget policy before every problem.

Budget fraction f: the engine runs at f times the calibrated speed against the
full budget. That is the same as f times the budget with every time constant
scaled by f, and it is what a slower engine or a longer-thinking model does.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from submission.attempt_log import LoggedAttempt, LoggedProblem
from submission.config import Config
from submission.policy import (
    FinishedAttempt,
    Policy,
    ProblemState,
    RunningAttempt,
    RunState,
)
from submission.records import ProblemSummary

log = logging.getLogger(__name__)

# AIMO-3: 17,400 s for 50 problems, scaled to the log's problem count.
BUDGET_PER_PROBLEM_S = 17_400.0 / 50


def _tokens_to_finish(attempt: LoggedAttempt) -> float:
    return float(attempt.tokens) if attempt.finishes else math.inf


@dataclass(frozen=True)
class ProblemOutcome:
    answer: int | None
    seconds: float
    stop_reason: str
    finished: tuple[FinishedAttempt, ...]
    tokens: int  # decoded by all attempts, finished or not (what the engine spent)


def simulate_problem(
    policy: Policy,
    attempts: Sequence[LoggedAttempt],
    budget_s: float,
    single_stream_rate: float,
    contention: float,
    tick_s: float,
) -> ProblemOutcome:
    """Run `attempts` together until the early-stop policy stops them or the budget ends."""
    # Every running stream decodes at the same rate from the same start, so one counter
    # (tokens decoded per stream) describes them all; attempts finish in token order.
    running = sorted(range(len(attempts)), key=lambda i: _tokens_to_finish(attempts[i]))
    decoded = 0.0
    cancelled_tokens = 0.0
    finished: list[FinishedAttempt] = []
    now = 0.0
    next_tick = tick_s
    reason = "deadline"
    while running and now < budget_s:
        rate = single_stream_rate / (1.0 + contention * (len(running) - 1))
        done_at = now + (_tokens_to_finish(attempts[running[0]]) - decoded) / rate
        step_to = min(done_at, next_tick, budget_s)
        decoded += rate * (step_to - now)
        now = step_to
        if done_at <= step_to:
            first = running.pop(0)
            attempt = attempts[first]
            finished.append(
                FinishedAttempt(
                    attempt_num=first,
                    answer=attempt.answer,
                    tokens=attempt.tokens,
                    time_s=now,
                    code_calls=attempt.code_calls,
                    errors=attempt.errors,
                    entropy=attempt.entropy,
                )
            )
        if now >= next_tick:
            next_tick = (math.floor(now / tick_s) + 1) * tick_s
        if now >= budget_s:
            break
        state = ProblemState(
            elapsed_s=now,
            budget_s=budget_s,
            attempts=len(attempts),
            finished=tuple(finished),
            running=tuple(RunningAttempt(i, int(decoded), now) for i in running),
        )
        decision = policy.early_stop.decide(state)
        if decision.stop:
            reason = decision.reason or "early stop"
            break
        if decision.cancel:
            kept = [i for i in running if i not in decision.cancel]
            cancelled_tokens += decoded * (len(running) - len(kept))
            running = kept
    tokens = sum(a.tokens for a in finished) + int(cancelled_tokens + decoded * len(running))
    return ProblemOutcome(policy.selection.select(finished), now, reason, tuple(finished), tokens)


@dataclass(frozen=True)
class RunOutcome:
    score: int
    seconds: float
    overrun: bool
    per_problem: tuple[ProblemSummary, ...]


def simulate_run(
    policy: Policy,
    problems: Sequence[LoggedProblem],
    solve_budget_s: float,
    single_stream_rate: float,
    contention: float,
    rng: random.Random,
    tick_s: float = 1.0,
    order: Callable[[Sequence[LoggedProblem], random.Random], list[LoggedProblem]] | None = None,
) -> RunOutcome:
    """One competition run: problems in random order, one global budget, same policy objects."""
    queue = order(problems, rng) if order else rng.sample(list(problems), len(problems))
    history: list[ProblemSummary] = []
    elapsed = 0.0
    score = 0
    for problem in queue:
        run = RunState(elapsed, solve_budget_s, len(problems), tuple(history))
        budget_s = max(0.0, policy.budget.problem_seconds(run))
        pool = list(problem.attempts)
        drawn = rng.sample(pool, min(policy.attempts, len(pool)))
        drawn += rng.choices(pool, k=policy.attempts - len(drawn))
        outcome = simulate_problem(policy, drawn, budget_s, single_stream_rate, contention, tick_s)
        elapsed += outcome.seconds
        correct = outcome.answer is not None and outcome.answer == problem.correct_answer
        score += correct
        votes = [a.answer for a in outcome.finished if a.answer is not None]
        history.append(
            ProblemSummary(
                problem_id=problem.problem_id,
                answer=outcome.answer if outcome.answer is not None else 0,
                seconds=outcome.seconds,
                budget_s=budget_s,
                attempts=policy.attempts,
                answered=len(votes),
                top_votes=votes.count(outcome.answer) if outcome.answer is not None else 0,
                tokens=outcome.tokens,
                stop_reason=outcome.stop_reason,
                is_correct=correct,
            )
        )
    return RunOutcome(score, elapsed, elapsed > solve_budget_s + 1e-6, tuple(history))


@dataclass(frozen=True)
class SweepRow:
    policy: str
    fraction: float
    runs: int
    score_mean: float
    score_sd: float
    score_min: int
    score_max: int
    seconds_mean: float
    budget_s: float
    overruns: int


def sweep(
    policies: Sequence[Policy],
    problems: Sequence[LoggedProblem],
    fractions: Sequence[float],
    seeds: int,
    single_stream_rate: float,
    contention: float,
    tick_s: float = 1.0,
    base_seed: int = 0,
) -> list[SweepRow]:
    """Every policy at every fraction over `seeds` runs (the same seeds for every policy)."""
    solve_budget_s = BUDGET_PER_PROBLEM_S * len(problems)
    rows = []
    for fraction in fractions:
        for policy in policies:
            outcomes = [
                simulate_run(
                    policy,
                    problems,
                    solve_budget_s,
                    single_stream_rate * fraction,
                    contention,
                    random.Random(base_seed + seed),
                    tick_s,
                )
                for seed in range(seeds)
            ]
            scores = [o.score for o in outcomes]
            rows.append(
                SweepRow(
                    policy=policy.name,
                    fraction=fraction,
                    runs=seeds,
                    score_mean=statistics.fmean(scores),
                    score_sd=statistics.pstdev(scores),
                    score_min=min(scores),
                    score_max=max(scores),
                    seconds_mean=statistics.fmean(o.seconds for o in outcomes),
                    budget_s=solve_budget_s,
                    overruns=sum(o.overrun for o in outcomes),
                )
            )
    return rows


# The tuned parameters and the values leave-problems-out cross-validation chooses among.
CV_GRID: dict[str, tuple[float, ...]] = {
    "budget.base_shares": (1.4, 1.8, 2.2),
    "budget.stretch": (2.5, 4.0, 6.0),
    "early_stop.error_power": (0.0, 0.5),
}


@dataclass(frozen=True)
class CrossValidation:
    fraction: float
    score_mean: float  # held-out problems answered right, summed over folds
    score_sd: float
    chosen: tuple[str, ...]  # the candidate each fold chose


def cross_validate(
    config: Config,
    problems: Sequence[LoggedProblem],
    fractions: Sequence[float],
    seeds: int,
    single_stream_rate: float,
    contention: float,
    tick_s: float,
    folds: int = 5,
) -> list[CrossValidation]:
    """Leave-problems-out: tune on the other folds' problems, score the held-out ones.

    Each fold picks the CV_GRID candidate with the best mean score over all
    fractions on runs of the training problems only; that policy then plays
    whole runs of all problems and only the held-out problems are counted.
    """
    order = sorted(problems, key=lambda p: p.problem_id)
    random.Random(0).shuffle(order)
    names = list(CV_GRID)
    candidates = [dict(zip(names, values, strict=True)) for values in _product(CV_GRID)]
    held_scores = {f: [0] * seeds for f in fractions}
    chosen = []
    for fold in range(folds):
        held = {p.problem_id for p in order[fold::folds]}
        train = [p for p in order if p.problem_id not in held]

        def fitness(candidate: dict[str, float], train: list[LoggedProblem] = train) -> float:
            rows = sweep(
                [_policy_with(config, candidate)],
                train,
                fractions,
                seeds,
                single_stream_rate,
                contention,
                tick_s,
                base_seed=1000,
            )
            return statistics.fmean(r.score_mean for r in rows)

        best = max(candidates, key=fitness)
        chosen.append(",".join(f"{k.split('.')[-1]}={v:g}" for k, v in best.items()))
        policy = _policy_with(config, best)
        for fraction in fractions:
            for seed in range(seeds):
                outcome = simulate_run(
                    policy,
                    problems,
                    BUDGET_PER_PROBLEM_S * len(problems),
                    single_stream_rate * fraction,
                    contention,
                    random.Random(seed),
                    tick_s,
                )
                held_scores[fraction][seed] += sum(
                    bool(s.is_correct) for s in outcome.per_problem if s.problem_id in held
                )
        log.info("fold %d/%d chose %s", fold + 1, folds, chosen[-1])
    return [
        CrossValidation(f, statistics.fmean(v), statistics.pstdev(v), tuple(chosen))
        for f, v in held_scores.items()
    ]


def _product(grid: dict[str, tuple[float, ...]]) -> list[tuple[float, ...]]:
    import itertools

    return list(itertools.product(*grid.values()))


def _policy_with(config: Config, values: dict[str, float]) -> Policy:
    from submission.config import set_field
    from submission.policy.defaults import default_policy

    tuned = copy.deepcopy(config)
    for dotted, value in values.items():
        set_field(tuned, dotted, repr(value))
    return default_policy(tuned)


def simulation_config(config: Config, problems: int) -> Config:
    """The config with its run-level safety margin scaled to the log's problem count."""
    scale = problems / config.profile.problems
    budget = dataclasses.replace(
        config.budget, safety_margin_s=config.budget.safety_margin_s * scale
    )
    return dataclasses.replace(config, budget=budget)


def all_policies(config: Config) -> list[Policy]:
    from submission.policy.anchors import anchor_policies
    from submission.policy.defaults import default_policy

    return [default_policy(config), *anchor_policies()]

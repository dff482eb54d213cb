"""A discrete-event simulation of the Solver's time behaviour over an attempt log.

It drives the very `Policy` objects the Solver uses. Per problem, K attempts drawn from the log
start together and share the engine: with n streams active each decodes at
R1 / (1 + a*(n-1)) tokens/s, so cancelling some speeds up the rest; each code
call keeps its stream off the engine for `code_call_s`. An attempt finishes once
it has decoded its recorded token count; attempts cut off in the recording
(is_none=1) never finish. Problems come in a random order against
one global budget; the early-stop policy is consulted on every completion and
every `tick_s`, the budget policy before every problem.

Budget fraction f: the engine decodes at f times the calibrated speed against
the full budget (code calls keep their seconds): what a slower engine or a
longer-thinking model does.
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


@dataclass(frozen=True)
class ProblemOutcome:
    answer: int | None
    seconds: float
    stop_reason: str
    finished: tuple[FinishedAttempt, ...]
    tokens: int  # decoded by all attempts, finished or not (what the engine spent)


def _segments(attempt: LoggedAttempt) -> list[float]:
    """The tokens decoded between code calls: `code_calls` calls spaced evenly over the tokens.

    An attempt cut off in the recording decodes its logged pieces, then never finishes.
    """
    piece = attempt.tokens / (attempt.code_calls + 1)
    pieces = [piece] * (attempt.code_calls + 1)
    if not attempt.finishes:
        pieces[-1] = math.inf
    return pieces


@dataclass
class _Stream:
    """One attempt in flight: decoding a piece, or waiting `until` for its code call."""

    num: int
    pieces: list[float]  # tokens left in this piece, then the pieces still to come
    decoded: float = 0.0
    until: float | None = None  # in a code call until then; None = decoding


def simulate_problem(
    policy: Policy,
    attempts: Sequence[LoggedAttempt],
    budget_s: float,
    single_stream_rate: float,
    contention: float,
    tick_s: float,
    code_call_s: float = 0.0,
) -> ProblemOutcome:
    """Run `attempts` together until the early-stop policy stops them or the budget ends.

    A stream in a code call spends `code_call_s` off the engine: it does not
    decode and does not slow the others down.
    """
    streams = [_Stream(i, _segments(a)) for i, a in enumerate(attempts)]
    cancelled_tokens = 0.0
    finished: list[FinishedAttempt] = []
    now = 0.0
    next_tick = tick_s
    reason = "deadline"
    while streams and now < budget_s:
        decoding = [s for s in streams if s.until is None]
        rate = single_stream_rate / (1.0 + contention * (len(decoding) - 1)) if decoding else 0.0
        events = [s.until for s in streams if s.until is not None]
        if decoding:
            events.append(now + min(s.pieces[0] for s in decoding) / rate)
        step_to = min(min(events), next_tick, budget_s)
        for s in decoding:
            s.decoded += rate * (step_to - now)
            s.pieces[0] -= rate * (step_to - now)
        now = step_to
        completed = False
        for s in list(streams):
            if s.until is not None and s.until <= now:
                s.until = None
            elif s.until is None and s.pieces[0] <= 1e-9 * max(1.0, s.decoded):
                s.pieces.pop(0)
                if s.pieces:
                    s.until = now + code_call_s
                    continue
                streams.remove(s)
                attempt = attempts[s.num]
                finished.append(
                    FinishedAttempt(
                        attempt_num=s.num,
                        answer=attempt.answer,
                        tokens=attempt.tokens,
                        time_s=now,
                        code_calls=attempt.code_calls,
                        errors=attempt.errors,
                        entropy=attempt.entropy,
                    )
                )
                completed = True
        ticked = now >= next_tick
        if ticked:
            next_tick = (math.floor(now / tick_s) + 1) * tick_s
        if now >= budget_s or not streams or not (completed or ticked):
            continue
        state = ProblemState(
            elapsed_s=now,
            budget_s=budget_s,
            attempts=len(attempts),
            finished=tuple(finished),
            running=tuple(RunningAttempt(s.num, int(s.decoded), now) for s in streams),
        )
        decision = policy.early_stop.decide(state)
        if decision.stop:
            reason = decision.reason or "early stop"
            break
        if decision.cancel:
            gone = [s for s in streams if s.num in decision.cancel]
            cancelled_tokens += sum(s.decoded for s in gone)
            streams = [s for s in streams if s.num not in decision.cancel]
    if not streams and reason == "deadline" and now < budget_s:
        reason = "all finished"
    unfinished = cancelled_tokens + sum(s.decoded for s in streams)
    tokens = sum(a.tokens for a in finished) + int(unfinished)
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
    code_call_s: float = 0.0,
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
        outcome = simulate_problem(
            policy, drawn, budget_s, single_stream_rate, contention, tick_s, code_call_s
        )
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
    code_call_s: float = 0.0,
    on_run: Callable[[], None] | None = None,
) -> list[SweepRow]:
    """Every policy at every fraction over `seeds` runs (the same seeds for every policy).

    `on_run` is called after every run (progress).
    """
    solve_budget_s = BUDGET_PER_PROBLEM_S * len(problems)
    rows = []
    for fraction in fractions:
        for policy in policies:
            outcomes = [
                _counted(
                    simulate_run(
                        policy,
                        problems,
                        solve_budget_s,
                        single_stream_rate * fraction,
                        contention,
                        random.Random(base_seed + seed),
                        tick_s,
                        code_call_s=code_call_s,
                    ),
                    on_run,
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


def _counted(outcome: RunOutcome, on_run: Callable[[], None] | None) -> RunOutcome:
    if on_run is not None:
        on_run()
    return outcome


# The tuned parameters and the values leave-problems-out cross-validation chooses among
# (patient_tokens 10**9 = no patience). error_power stays 0.5: every fold chose it over 0
# last round, and the held-out half confirmed it (docs/policy.md).
CV_GRID: dict[str, tuple[float, ...]] = {
    "budget.base_shares": (1.4, 1.8, 2.2),
    "early_stop.patient_tokens": (40_000, 10**9),
}


@dataclass(frozen=True)
class AnchorLead:
    """Ours against one anchor at one fraction, on the same runs."""

    anchor: str
    anchor_mean: float
    lead: float  # ours minus the anchor
    lead_se_seeds: float  # standard error of the lead over seeds (runs paired by seed)
    lead_se_problems: float  # ... over problems (how much a new set of problems may move it)


@dataclass(frozen=True)
class CrossValidation:
    """One fraction's held-out estimate, against every anchor on the same runs."""

    fraction: float
    score_mean: float  # held-out problems answered right, summed over folds
    score_sd: float
    anchor: str  # the anchor with the best mean score at this fraction
    anchor_mean: float
    lead: float  # score_mean - anchor_mean
    lead_se_seeds: float  # standard error of the lead over seeds (runs paired by seed)
    lead_se_problems: float  # ... over problems (how much a new set of problems may move it)
    overruns: int
    chosen: tuple[str, ...]  # the candidate each fold chose
    anchors: tuple[AnchorLead, ...] = ()  # every anchor, the best one included


def cross_validation_runs(fractions: int, seeds: int, folds: int = 5, tune: bool = True) -> int:
    """The simulated runs `cross_validate` (and `tune` after it) make: for progress."""
    from submission.policy.anchors import anchor_policies

    candidates = len(_product(CV_GRID))
    per_fold = (candidates + 1) * fractions * seeds
    anchors = len(anchor_policies()) * fractions * seeds
    return folds * per_fold + anchors + (candidates * fractions * seeds if tune else 0)


def cross_validate(
    config: Config,
    problems: Sequence[LoggedProblem],
    fractions: Sequence[float],
    seeds: int,
    single_stream_rate: float,
    contention: float,
    tick_s: float,
    folds: int = 5,
    code_call_s: float = 0.0,
    on_run: Callable[[], None] | None = None,
) -> list[CrossValidation]:
    """Leave-problems-out: tune on the other folds' problems, score the held-out ones.

    Each fold picks the CV_GRID candidate with the best mean score over all
    fractions on runs of the training problems only; that policy then plays
    whole runs of all problems and only the held-out problems are counted. The
    anchors play the same seeds (no tuning, so all their problems count).
    """
    from submission.policy.anchors import anchor_policies

    order = sorted(problems, key=lambda p: p.problem_id)
    random.Random(0).shuffle(order)
    solve_budget_s = BUDGET_PER_PROBLEM_S * len(problems)

    def runs(policy: Policy, fraction: float) -> list[RunOutcome]:
        return [
            _counted(
                simulate_run(
                    policy,
                    problems,
                    solve_budget_s,
                    single_stream_rate * fraction,
                    contention,
                    random.Random(seed),
                    tick_s,
                    code_call_s=code_call_s,
                ),
                on_run,
            )
            for seed in range(seeds)
        ]

    # right[fraction][seed][problem_id], ours from the fold that held the problem out
    ours: dict[float, list[dict[str, bool]]] = {f: [{} for _ in range(seeds)] for f in fractions}
    overruns = dict.fromkeys(fractions, 0)
    chosen = []
    for fold in range(folds):
        held = {p.problem_id for p in order[fold::folds]}
        train = [p for p in order if p.problem_id not in held]
        best = tune(
            config,
            train,
            fractions,
            seeds,
            single_stream_rate,
            contention,
            tick_s,
            code_call_s=code_call_s,
            on_run=on_run,
        )
        chosen.append(describe_candidate(best))
        for fraction in fractions:
            for seed, outcome in enumerate(runs(_policy_with(config, best), fraction)):
                overruns[fraction] += outcome.overrun
                ours[fraction][seed].update(
                    (s.problem_id, bool(s.is_correct))
                    for s in outcome.per_problem
                    if s.problem_id in held
                )
        log.info("fold %d/%d chose %s", fold + 1, folds, chosen[-1])
    results = []
    for fraction in fractions:
        anchors = {
            a.name: [
                {s.problem_id: bool(s.is_correct) for s in o.per_problem} for o in runs(a, fraction)
            ]
            for a in anchor_policies()
        }
        mine = ours[fraction]
        leads = [_lead(name, mine, theirs, problems) for name, theirs in anchors.items()]
        best_anchor = max(leads, key=lambda lead: lead.anchor_mean)
        totals = [sum(m.values()) for m in mine]
        results.append(
            CrossValidation(
                fraction=fraction,
                score_mean=statistics.fmean(totals),
                score_sd=statistics.pstdev(totals),
                anchor=best_anchor.anchor,
                anchor_mean=best_anchor.anchor_mean,
                lead=best_anchor.lead,
                lead_se_seeds=best_anchor.lead_se_seeds,
                lead_se_problems=best_anchor.lead_se_problems,
                overruns=overruns[fraction],
                chosen=tuple(chosen),
                anchors=tuple(leads),
            )
        )
    return results


def tune(
    config: Config,
    problems: Sequence[LoggedProblem],
    fractions: Sequence[float],
    seeds: int,
    single_stream_rate: float,
    contention: float,
    tick_s: float,
    code_call_s: float = 0.0,
    on_run: Callable[[], None] | None = None,
) -> dict[str, float]:
    """The CV_GRID candidate with the best mean score over all fractions on `problems`.

    Each cross-validation fold tunes this way on its training problems; run on all
    problems, it gives the policy to hand over (`simulate --write-policy`).
    """
    names = list(CV_GRID)
    candidates = [dict(zip(names, values, strict=True)) for values in _product(CV_GRID)]

    def fitness(candidate: dict[str, float]) -> float:
        rows = sweep(
            [_policy_with(config, candidate)],
            problems,
            fractions,
            seeds,
            single_stream_rate,
            contention,
            tick_s,
            base_seed=1000,
            code_call_s=code_call_s,
            on_run=on_run,
        )
        return statistics.fmean(r.score_mean for r in rows)

    return max(candidates, key=fitness)


def describe_candidate(candidate: dict[str, float]) -> str:
    return ",".join(f"{k.split('.')[-1]}={v!r}" for k, v in candidate.items())


def _lead(
    anchor: str,
    mine: list[dict[str, bool]],
    theirs: list[dict[str, bool]],
    problems: Sequence[LoggedProblem],
) -> AnchorLead:
    per_seed = [sum(m.values()) - sum(t.values()) for m, t in zip(mine, theirs, strict=True)]
    per_problem = [
        statistics.fmean(
            m[p.problem_id] - t[p.problem_id] for m, t in zip(mine, theirs, strict=True)
        )
        for p in problems
    ]
    return AnchorLead(
        anchor=anchor,
        anchor_mean=_mean_total(theirs),
        lead=statistics.fmean(per_seed),
        lead_se_seeds=_standard_error(per_seed),
        lead_se_problems=_standard_error(per_problem) * len(problems),
    )


def _mean_total(right: list[dict[str, bool]]) -> float:
    return statistics.fmean(sum(r.values()) for r in right)


def _standard_error(values: Sequence[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.inf


def _product(grid: dict[str, tuple[float, ...]]) -> list[tuple[float, ...]]:
    import itertools

    return list(itertools.product(*grid.values()))


def _policy_with(config: Config, values: dict[str, float]) -> Policy:
    from submission.config_fields import set_field
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

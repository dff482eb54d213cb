"""`python -m submission simulate`: replay an attempt log as whole competition runs.

A discrete-event simulation of the Solver's time behaviour, driving the very
`Policy` objects the Solver uses. Per problem, K attempts drawn from the log
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

import argparse
import copy
import dataclasses
import json
import logging
import math
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from submission.config import Config, ConfigError, add_config_arguments, config_from_args
from submission.policy import (
    FinishedAttempt,
    Policy,
    ProblemState,
    RunningAttempt,
    RunState,
)
from submission.records import ProblemSummary

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = Path(__file__).resolve().parents[2] / "shared/data/attempts/hard50_dev_half.csv"
REQUIRED_COLUMNS = ("problem_id", "answer", "is_none", "tokens", "time_s")
# AIMO-3: 17,400 s for 50 problems, scaled to the log's problem count.
BUDGET_PER_PROBLEM_S = 17_400.0 / 50
DEFAULT_FRACTIONS = (1.0, 0.5, 0.25, 0.125)


class AttemptLogError(ValueError):
    """An attempt log that cannot be simulated."""


@dataclass(frozen=True)
class LoggedAttempt:
    answer: int | None
    tokens: int
    finishes: bool  # False: cut off in the recording, so it never finishes here
    code_calls: int = 0
    errors: int = 0
    entropy: float | None = None


@dataclass(frozen=True)
class LoggedProblem:
    problem_id: str
    correct_answer: int | None  # None: no attempt in the log was right
    attempts: tuple[LoggedAttempt, ...]


def load_attempt_log(path: str | Path) -> pl.DataFrame:
    """Read an attempt log (CSV or parquet) and check the columns the simulator needs."""
    path = Path(path)
    if not path.is_file():
        raise AttemptLogError(f"attempt log not found: {path}")
    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise AttemptLogError(f"{path}: missing columns {missing} (need {list(REQUIRED_COLUMNS)})")
    if frame.height == 0:
        raise AttemptLogError(f"{path}: no attempts")
    return frame


def problems_from_log(frame: pl.DataFrame) -> list[LoggedProblem]:
    """One LoggedProblem per problem_id, in the log's order of first appearance."""
    has = set(frame.columns)
    problems = []
    for (pid,), rows in frame.group_by("problem_id", maintain_order=True):
        correct = None
        if "is_correct" in has:
            right = rows.filter(pl.col("is_correct").cast(pl.Boolean).fill_null(False))
            if right.height:
                correct = int(right["answer"][0])
        attempts = tuple(
            LoggedAttempt(
                answer=None if row["answer"] is None or row["is_none"] else int(row["answer"]),
                tokens=max(1, int(row["tokens"])),
                finishes=not bool(row["is_none"]),
                code_calls=int(row.get("code_calls") or 0),
                errors=int(row.get("errors") or 0),
                entropy=row.get("entropy"),
            )
            for row in rows.iter_rows(named=True)
        )
        problems.append(LoggedProblem(str(pid), correct, attempts))
    return problems


def calibrate_single_stream_rate(frame: pl.DataFrame, concurrency: int, contention: float) -> float:
    """R1: the median attempt's tokens per second, with the recorded concurrency's slow-down undone.

    The median, not the log's total tokens over its total seconds: an attempt's
    seconds also hold its code runs (about 2 s per call on hard50, fitted), which
    this decode-only model has no place for, so the long, code-heavy attempts
    would pull the rate of every stream down. With the median the simulator
    reproduces the anchors' scores of issue 4's independent evaluation
    (docs/policy.md).
    """
    timed = frame.filter(pl.col("time_s") > 0)
    if timed.height == 0:
        raise AttemptLogError("no attempt with time_s > 0 to calibrate the engine's speed from")
    per_stream = float((timed["tokens"] / timed["time_s"]).median())
    return per_stream * (1.0 + contention * (concurrency - 1))


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--attempts",
        default=None,
        help=f"attempt log, CSV or parquet (default: {DEFAULT_ATTEMPTS} when present)",
    )
    parser.add_argument("--seeds", type=int, default=200, help="runs per policy and fraction")
    parser.add_argument(
        "--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS), metavar="F"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="streams at once when the log was recorded, to calibrate R1 "
        "(default: engine.sim.concurrency, 24 as in the hard50 log)",
    )
    parser.add_argument("--tick", type=float, default=1.0, help="policy consult interval (s)")
    parser.add_argument(
        "--plot", default=None, help="PNG plot path (default: OUT_DIR/simulate.png; '' = none)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument(
        "--cross-validate",
        action="store_true",
        help="leave-problems-out estimate of the default policy tuned over CV_GRID (5 folds)",
    )


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1 or args.tick <= 0 or min(args.fractions) <= 0:
        log.error("--seeds, --tick and every --fractions value must be positive")
        return 2
    path = Path(args.attempts) if args.attempts else DEFAULT_ATTEMPTS
    if args.attempts is None and not path.is_file():
        log.error(
            "no --attempts given and the default log %s is absent "
            "(it is not shipped in the repo: no licence stated)",
            path,
        )
        return 2
    try:
        frame = load_attempt_log(path)
    except AttemptLogError as exc:
        log.error("%s", exc)
        return 2
    problems = problems_from_log(frame)
    try:
        config = simulation_config(config_from_args(args), len(problems))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    contention = config.engine.sim.contention
    concurrency = config.engine.sim.concurrency if args.concurrency is None else args.concurrency
    if concurrency < 1:
        log.error("the recorded concurrency must be at least 1, not %d", concurrency)
        return 2
    try:
        rate = config.engine.sim.tokens_per_s or calibrate_single_stream_rate(
            frame, concurrency, contention
        )
    except AttemptLogError as exc:
        log.error("%s: %s", path, exc)
        return 2
    log.info("%d problems, R1 = %.1f tokens/s, a = %.3f", len(problems), rate, contention)
    if args.cross_validate:
        cv = cross_validate(
            config, problems, args.fractions, args.seeds, rate, contention, args.tick
        )
        if args.json:
            sys.stdout.write(json.dumps([dataclasses.asdict(r) for r in cv], indent=1) + "\n")
        else:
            print_cross_validation(cv, len(problems))
        return 0
    rows = sweep(
        all_policies(config), problems, args.fractions, args.seeds, rate, contention, args.tick
    )
    if args.json:
        sys.stdout.write(json.dumps([dataclasses.asdict(r) for r in rows], indent=1) + "\n")
    else:
        print_table(rows, len(problems))
    plot_path = Path(config.output.out_dir) / "simulate.png" if args.plot is None else args.plot
    if plot_path:
        plot(rows, len(problems), Path(plot_path))
        log.info("plot written to %s", plot_path)
    return 0


def print_cross_validation(rows: Sequence[CrossValidation], problems: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"leave-problems-out estimate: held-out score out of {problems}")
    for column in ("fraction", "score", "sd"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r.fraction:g}", f"{r.score_mean:.2f}", f"{r.score_sd:.2f}")
    console = Console()
    console.print(table)
    console.print("chosen per fold: " + "; ".join(rows[0].chosen if rows else ()))


def print_table(rows: Sequence[SweepRow], problems: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"simulated runs: score out of {problems}")
    for column in ("fraction", "policy", "score", "sd", "min-max", "time used", "overruns"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for r in rows:
        table.add_row(
            f"{r.fraction:g}",
            r.policy,
            f"{r.score_mean:.2f}",
            f"{r.score_sd:.2f}",
            f"{r.score_min}-{r.score_max}",
            f"{r.seconds_mean:.0f}/{r.budget_s:.0f} s",
            f"{r.overruns}/{r.runs}",
        )
    Console().print(table)


def plot(rows: Sequence[SweepRow], problems: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r.policy for r in rows):
        mine = sorted((r for r in rows if r.policy == name), key=lambda r: r.fraction)
        ax.errorbar(
            [r.fraction for r in mine],
            [r.score_mean for r in mine],
            yerr=[r.score_sd for r in mine],
            marker="o",
            capsize=3,
            label=name,
        )
    ax.set_xscale("log", base=2)
    fractions = sorted({r.fraction for r in rows})
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.set_xlabel("budget fraction (engine speed x budget)")
    ax.set_ylabel(f"score out of {problems} (mean ± sd)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)

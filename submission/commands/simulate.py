"""`python -m submission simulate`: replay an attempt log as whole competition runs.

The simulation itself is `submission.simulator`; the log model is `submission.attempt_log`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from submission.attempt_log import (
    DEFAULT_ATTEMPTS,
    AttemptLogError,
    engine_calibration,
    load_attempt_log,
    problems_from_log,
)
from submission.config import ConfigError, add_config_arguments, config_from_args
from submission.simulator import (
    CrossValidation,
    SweepRow,
    all_policies,
    cross_validate,
    simulation_config,
    sweep,
)

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (1.0, 0.5, 0.25, 0.125)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--attempts",
        default=None,
        help="attempt log, CSV or parquet (default: the embedded synthetic log, "
        "submission/data/synthetic_attempts.csv)",
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
    concurrency = config.engine.sim.concurrency if args.concurrency is None else args.concurrency
    if concurrency < 1:
        log.error("the recorded concurrency must be at least 1, not %d", concurrency)
        return 2
    sim = dataclasses.replace(config.engine.sim, concurrency=concurrency)
    try:
        engine = engine_calibration(frame, sim)
    except AttemptLogError as exc:
        log.error("%s: %s", path, exc)
        return 2
    contention, rate = sim.contention, engine.single_stream_rate
    log.info(
        "%d problems, R1 = %.1f tokens/s, %.2f s per code call, a = %.3f",
        len(problems),
        rate,
        engine.code_call_s,
        contention,
    )
    model = (problems, args.fractions, args.seeds, rate, contention, args.tick)
    if args.cross_validate:
        cv = cross_validate(config, *model, code_call_s=engine.code_call_s)
        if args.json:
            sys.stdout.write(json.dumps([dataclasses.asdict(r) for r in cv], indent=1) + "\n")
        else:
            print_cross_validation(cv, len(problems))
        return 0
    rows = sweep(all_policies(config), *model, code_call_s=engine.code_call_s)
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
    columns = ("fraction", "score", "sd", "best anchor", "lead", "se (seeds)", "se (problems)")
    for column in (*columns, "overruns"):
        table.add_column(column, justify="left" if column == "best anchor" else "right")
    for r in rows:
        table.add_row(
            f"{r.fraction:g}",
            f"{r.score_mean:.2f}",
            f"{r.score_sd:.2f}",
            f"{r.anchor} {r.anchor_mean:.2f}",
            f"{r.lead:+.2f}",
            f"{r.lead_se_seeds:.2f}",
            f"{r.lead_se_problems:.2f}",
            str(r.overruns),
        )
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

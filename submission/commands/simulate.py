"""`python -m submission simulate`: replay an attempt log as whole competition runs.

The simulation itself is `submission.simulator`; the log model is
`submission.attempt_log`. The engine model is the log's own fit, or the speed
profile `--speed-profile` names (the box the competition gives, measured by
`bench speed`): the command says which, and how fast that box is against the
one the log was recorded on. `--cross-validate` gives the held-out table
against every anchor and tunes the policy on the whole log; `--write-policy`
(or `--out`) writes that policy as a TOML the kernel reads (`kernel.py
--config`). Progress shows while it runs; `--out DIR` keeps the tables, the
JSON, the plot and the policy there.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from submission.attempt_log import (
    DEFAULT_ATTEMPTS,
    AttemptLogError,
    calibrate_engine,
    engine_calibration,
    load_attempt_log,
    problems_from_log,
    recorded_concurrency,
)
from submission.commands.progress_bar import LiveProgress
from submission.config import (
    Config,
    ConfigError,
    add_config_arguments,
    config_from_args,
    config_toml,
)
from submission.config_fields import set_field
from submission.simulator import (
    CV_GRID,
    CrossValidation,
    SweepRow,
    all_policies,
    cross_validate,
    cross_validation_runs,
    describe_candidate,
    simulation_config,
    sweep,
    tune,
)
from submission.speed_profile import SpeedProfileError, load_profile

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
        help="streams at once when the log was recorded, to calibrate R1, for a log without "
        "a concurrency column (default: engine.sim.concurrency, 24 as in the hard50 log)",
    )
    parser.add_argument(
        "--speed-profile",
        type=Path,
        default=None,
        help="engine speed measured on the target box (`bench speed`): R1 and a come from it",
    )
    parser.add_argument("--tick", type=float, default=1.0, help="policy consult interval (s)")
    parser.add_argument(
        "--plot", default=None, help="PNG plot path (default: OUT/simulate.png; '' = none)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument(
        "--cross-validate",
        action="store_true",
        help="leave-problems-out estimate of the default policy tuned over CV_GRID (5 folds), "
        "then the policy tuned on the whole log",
    )
    parser.add_argument(
        "--write-policy",
        type=Path,
        default=None,
        help="with --cross-validate: write the tuned policy (over the --config given) as TOML "
        "for kernel.py --config (default with --out: OUT/policy.toml)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the table (.md), the rows (.json), the plot and the policy "
        "(default: output.out_dir for the plot only)",
    )


@dataclass(frozen=True)
class EngineModel:
    """The engine the runs are simulated on, and what it says about where it came from."""

    single_stream_rate: float
    contention: float
    code_call_s: float
    lines: tuple[str, ...]


def engine_model(
    frame: pl.DataFrame, config: Config, concurrency: int, profile_path: Path | None
) -> EngineModel:
    """The log's fit, or the speed profile's R1 and a (code calls stay the log's)."""
    sim = dataclasses.replace(config.engine.sim, concurrency=concurrency)
    fitted = engine_calibration(frame, sim)
    how = (
        "each attempt's recorded concurrency"
        if recorded_concurrency(frame)
        else f"{concurrency} streams at once assumed"
    )
    calls = f"{fitted.code_call_s:.2f} s per code call (fitted from the log)"
    if profile_path is None:
        line = (
            f"engine model: the log's fit ({how}): R1 = {fitted.single_stream_rate:.1f} tokens/s, "
            f"a = {sim.contention:.3f}, {calls}; fraction 1 is the box the log was recorded on"
        )
        return EngineModel(fitted.single_stream_rate, sim.contention, fitted.code_call_s, (line,))
    profile = load_profile(profile_path)
    recording = calibrate_engine(frame, concurrency, profile.contention).single_stream_rate
    streams = config.solver.attempts  # what the Solver runs at once on the target box
    target_rate = profile.single_stream_rate / (1 + profile.contention * (streams - 1))
    recorded_rate = recording / (1 + profile.contention * (streams - 1))
    lines = (
        f"engine model: speed profile {profile_path} ({profile.describe()}); {calls}",
        f"the log's recording fits R1 = {recording:.1f} tokens/s ({how}); at {streams} streams "
        f"the target box decodes {target_rate:.1f} tokens/s per stream against "
        f"{recorded_rate:.1f}: it implies budget fraction {target_rate / recorded_rate:.3g} "
        "of the recording; fraction 1 below is the target box",
    )
    return EngineModel(profile.single_stream_rate, profile.contention, fitted.code_call_s, lines)


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1 or args.tick <= 0 or min(args.fractions) <= 0:
        log.error("--seeds, --tick and every --fractions value must be positive")
        return 2
    if args.write_policy is not None and not args.cross_validate:
        log.error("--write-policy needs --cross-validate (the policy is tuned there)")
        return 2
    path = Path(args.attempts) if args.attempts else DEFAULT_ATTEMPTS
    try:
        frame = load_attempt_log(path)
        problems = problems_from_log(frame)
        base = config_from_args(args)
        config = simulation_config(base, len(problems))
        concurrency = (
            config.engine.sim.concurrency if args.concurrency is None else args.concurrency
        )
        if concurrency < 1:
            raise ConfigError(f"the recorded concurrency must be at least 1, not {concurrency}")
        engine = engine_model(frame, config, concurrency, args.speed_profile)
    except (AttemptLogError, ConfigError, SpeedProfileError) as exc:
        log.error("%s: %s", path, exc)
        return 2
    log.info("%s: %d problems, %d attempts", path, len(problems), frame.height)
    for line in engine.lines:
        log.info("%s", line)
    model = (
        problems,
        args.fractions,
        args.seeds,
        engine.single_stream_rate,
        engine.contention,
        args.tick,
    )
    if args.cross_validate:
        total = cross_validation_runs(len(args.fractions), args.seeds)
        with LiveProgress("simulate", total, unit="runs") as progress:
            cv = cross_validate(
                config, *model, code_call_s=engine.code_call_s, on_run=progress.advance
            )
            chosen = tune(config, *model, code_call_s=engine.code_call_s, on_run=progress.advance)
        report = cross_validation_markdown(cv, len(problems), engine.lines, chosen)
        policy = policy_toml(base, chosen, path, cv)
        _show(report, [dataclasses.asdict(r) for r in cv], args.json)
        policy_path = args.write_policy or (args.out / "policy.toml" if args.out else None)
        if args.out:
            _keep(args.out, "cross_validation", report, [dataclasses.asdict(r) for r in cv])
        if policy_path is not None:
            policy_path.parent.mkdir(parents=True, exist_ok=True)
            policy_path.write_text(policy, encoding="utf-8")
            log.info("tuned policy (%s) written to %s", describe_candidate(chosen), policy_path)
        return 0
    policies = all_policies(config)
    total = len(policies) * len(args.fractions) * args.seeds
    with LiveProgress("simulate", total, unit="runs") as progress:
        rows = sweep(policies, *model, code_call_s=engine.code_call_s, on_run=progress.advance)
    report = sweep_markdown(rows, len(problems), engine.lines)
    _show(report, [dataclasses.asdict(r) for r in rows], args.json)
    if args.out:
        _keep(args.out, "simulate", report, [dataclasses.asdict(r) for r in rows])
    out = args.out or Path(config.output.out_dir)
    plot_path = out / "simulate.png" if args.plot is None else args.plot
    if plot_path:
        plot(rows, len(problems), Path(plot_path))
        log.info("plot written to %s", plot_path)
    return 0


def policy_toml(
    base: Config, chosen: dict[str, float], log_path: Path, cv: Sequence[CrossValidation]
) -> str:
    """The config simulate ran with (its --config and --set), the tuned fields set, as TOML."""
    tuned = copy.deepcopy(base)
    for dotted, value in chosen.items():
        set_field(tuned, dotted, repr(value))
    sets = " ".join(f"--set {k}={v!r}" for k, v in chosen.items())
    header = [
        f"Policy tuned by `python -m submission simulate --cross-validate` on {log_path}",
        f"over {', '.join(CV_GRID)}: {describe_candidate(chosen)} (the same as {sets}).",
        "Held out (ours vs the best anchor, lead and its standard errors over seeds / problems):",
        *(
            f"  fraction {r.fraction:g}: {r.score_mean:.2f} vs {r.anchor} {r.anchor_mean:.2f}, "
            f"lead {r.lead:+.2f} ({r.lead_se_seeds:.2f} / {r.lead_se_problems:.2f})"
            for r in cv
        ),
        "Read by: python submission/kernel.py --config THIS_FILE",
    ]
    return "".join(f"# {line}\n" for line in header) + config_toml(tuned, always=chosen)


def sweep_markdown(rows: Sequence[SweepRow], problems: int, engine_lines: Sequence[str]) -> str:
    lines = [
        f"# Simulated runs: score out of {problems}",
        "",
        *(f"- {line}" for line in engine_lines),
        "",
        "| fraction | policy | score | sd | min-max | time used | overruns |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.fraction:g} | {r.policy} | {r.score_mean:.2f} | {r.score_sd:.2f} | "
        f"{r.score_min}-{r.score_max} | {r.seconds_mean:.0f}/{r.budget_s:.0f} s | "
        f"{r.overruns}/{r.runs} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def cross_validation_markdown(
    rows: Sequence[CrossValidation],
    problems: int,
    engine_lines: Sequence[str],
    chosen: dict[str, float],
) -> str:
    anchors = [a.anchor for a in rows[0].anchors] if rows else []
    lines = [
        f"# Leave-problems-out estimate: held-out score out of {problems}",
        "",
        *(f"- {line}" for line in engine_lines),
        "",
        "Each anchor: its mean score, then our lead with its standard error over seeds "
        "and over problems.",
        "",
        "| fraction | ours (sd) | " + " | ".join(anchors) + " | overruns |",
        "| ---: | ---: |" + " ---: |" * len(anchors) + " ---: |",
    ]
    for r in rows:
        cells = [
            f"{a.anchor_mean:.2f} ({a.lead:+.2f} ± {a.lead_se_seeds:.2f} / "
            f"{a.lead_se_problems:.2f})"
            for a in r.anchors
        ]
        lines.append(
            f"| {r.fraction:g} | {r.score_mean:.2f} ({r.score_sd:.2f}) | "
            + " | ".join(cells)
            + f" | {r.overruns} |"
        )
    if rows:
        lines += ["", "Chosen per fold: " + "; ".join(rows[0].chosen)]
    lines += ["", f"Tuned on the whole log (the policy to hand over): {describe_candidate(chosen)}"]
    return "\n".join(lines) + "\n"


def _show(markdown: str, rows: list[dict[str, object]], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    from rich.console import Console
    from rich.markdown import Markdown

    Console(file=sys.stdout, width=max(120, Console().width)).print(Markdown(markdown))


def _keep(out: Path, name: str, markdown: str, rows: list[dict[str, object]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(markdown, encoding="utf-8")
    (out / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    log.info("%s written to %s", name, out)


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

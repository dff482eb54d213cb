"""`python -m submission rehearse`: the kernel run as Kaggle runs it, before a push.

For each competition profile it lays out a Kaggle-shaped tree in a temporary
folder (`rehearsal/tree.py`), runs the kernel there in fresh venvs holding only
the Kaggle image's own packages, interactively and as a competition rerun
served to the real gateway (`rehearsal/runs.py`), every run offline and ended
with the rehearsal (`rehearsal/isolation.py`), with live progress on stderr;
then it prints a verdict table (`rehearsal/verdict.py`): install time, time to
`serve()`, time to the first answer, rows, fallbacks with their reasons, wall
time, and pass/fail.

Profiles: `--profile`, else every profile whose `kaggle_evaluation` was given
(`--kaggle-evaluation`, repeatable: one folder per competition), else aimo3.
The config is the packaged `kaggle.toml` (or `--config`), then `--sim`'s
settings (`SIM_SETTINGS`), then the `--set` overrides, handed to the kernel
through `$AIMO_CONFIG`; `$AIMO_KAGGLE_ROOT` points its /kaggle paths at the tree.
Everything it can check (wheels against the interpreter, the gateway packages,
the config, loopback) is checked before anything runs. The logs and
`verdicts.json` go to `--out` and stay there; the tree goes unless `--keep`.

Exit codes: 0 every run passed; 1 a run failed; 2 bad input; 130 interrupted
(Ctrl-C or SIGTERM: the runs are stopped and cleaned up first).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from submission.config import (
    PACKAGE_DATA,
    Config,
    ConfigError,
    add_config_arguments,
    load_config,
)
from submission.rehearsal.isolation import loopback_is_up, own_namespaces_allowed
from submission.rehearsal.progress import Progress
from submission.rehearsal.runs import RunSettings, rehearse_interactive, rehearse_rerun
from submission.rehearsal.tree import (
    build_own_wheel,
    evaluation_profiles,
    lay_out,
    make_root,
    missing_dependency_wheels,
)
from submission.rehearsal.venvs import (
    PythonChoiceError,
    build_gateway_venv,
    build_image_venv,
    choose_python,
)
from submission.rehearsal.verdict import Verdict, print_verdicts

PRODUCTION_CONFIG = Path(__file__).resolve().parents[1] / "kaggle.toml"
# `--sim`: the sim engine on the embedded synthetic attempt log, fast enough that a run of
# the 10 reference problems takes seconds: 2000x the log's decode rate, 50 ms chunks, and
# 50 ms per code call (the log's fitted 2.2 s per call would make each run take minutes).
SIM_SETTINGS = (
    "engine.kind=sim",
    "engine.sim.speed=2000",
    "engine.sim.chunk_s=0.05",
    "engine.sim.code_call_s=0.05",
)
EXIT_INTERRUPTED = 130


class RehearsalInputError(ValueError):
    """Input that stops the rehearsal before anything runs."""


@dataclass(frozen=True)
class Plan:
    """What the rehearsal will run, every input checked."""

    configs: dict[str, Config]  # profile -> its config
    evaluations: dict[str, Path]  # profile -> its kaggle_evaluation folder (rerun possible)
    test_csvs: dict[str, Path]
    python: str
    python_version: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.set_defaults(profile=None)  # none given: every profile with a kaggle_evaluation
    parser.add_argument(
        "--wheelhouse", type=Path, required=True, help="offline_wheels/download.py's dataset folder"
    )
    parser.add_argument(
        "--image-wheels",
        type=Path,
        required=True,
        help="wheels of what the Kaggle image provides (grpcio, protobuf, pandas)",
    )
    parser.add_argument(
        "--kaggle-evaluation",
        type=Path,
        action="append",
        default=[],
        help="a folder holding a competition's kaggle_evaluation (repeatable, one per "
        "competition; without one: the built-in replay, and no rerun)",
    )
    parser.add_argument(
        "--sim",
        action="store_true",
        help="the sim engine on the embedded attempt log, fast (SIM_SETTINGS; docs/kaggle.md)",
    )
    parser.add_argument(
        "--python",
        default=None,
        help="the Kaggle image's Python for the kernel venvs (default: this one, or "
        "pythonX.Y on PATH, whichever the wheelhouse was built for)",
    )
    parser.add_argument(
        "--test-csv",
        type=Path,
        default=None,
        help="the competition's test.csv (default: each profile's embedded reference problems)",
    )
    parser.add_argument(
        "--gateway-python",
        default=None,
        help="the gateway's interpreter (default: a venv of the image wheels plus polars)",
    )
    parser.add_argument(
        "--no-rebuild", action="store_true", help="use the wheelhouse's own wheel as it is"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/rehearsal"),
        help="logs and verdicts.json, kept (default: out/rehearsal)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="lay the tree here and keep it")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per run")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")


def plan_rehearsal(args: argparse.Namespace) -> Plan:
    """Every input checked before anything runs (RehearsalInputError lists what is wrong)."""
    problems: list[str] = []
    for what, path in [("wheelhouse", args.wheelhouse), ("image wheels", args.image_wheels)]:
        if not path.is_dir():
            problems.append(f"{what} not found: {path}")
    if not list(args.wheelhouse.glob("wheels/*.whl")) and args.wheelhouse.is_dir():
        problems.append(f"no wheels in {args.wheelhouse}/wheels: build it with offline_wheels/")
    elif (
        args.wheelhouse.is_dir()
        and not args.no_rebuild
        and (missing := missing_dependency_wheels(args.wheelhouse))
    ):
        problems.append(
            f"the wheelhouse {args.wheelhouse} has no wheel of {', '.join(missing)}, which "
            "this checkout's package needs: rebuild it (python offline_wheels/download.py "
            "--out DIR), or rehearse its own wheel (--no-rebuild)"
        )
    evaluations: dict[str, Path] = {}
    for folder in args.kaggle_evaluation:
        found = evaluation_profiles(folder)
        if not found:
            problems.append(f"no kaggle_evaluation with a known server module in {folder}")
        for profile in found:
            evaluations.setdefault(profile, folder)
    profiles = [args.profile] if args.profile else sorted(evaluations, reverse=True) or ["aimo3"]
    if args.profile and args.kaggle_evaluation and args.profile not in evaluations:
        problems.append(
            f"none of {args.kaggle_evaluation} holds {args.profile}'s kaggle_evaluation"
        )
    configs: dict[str, Config] = {}
    overrides = [*(SIM_SETTINGS if args.sim else ()), *args.overrides]
    for profile in profiles:
        try:
            configs[profile] = load_config(
                profile, args.config_file or PRODUCTION_CONFIG, overrides
            )
        except ConfigError as exc:
            problems.append(f"config ({profile}): {exc}")
    test_csvs = {p: args.test_csv or PACKAGE_DATA / f"{p}_reference.csv" for p in profiles}
    problems += [f"test csv not found: {path}" for path in test_csvs.values() if not path.is_file()]
    if not own_namespaces_allowed() and not loopback_is_up():
        problems.append(
            "loopback is down here and unshare cannot give the runs a network namespace: "
            "the gateway's gRPC needs 127.0.0.1 (`ip link set lo up`)"
        )
    python, version = "", ""
    if not problems:
        try:
            python, version = choose_python(args.wheelhouse, args.image_wheels, args.python)
        except PythonChoiceError as exc:
            problems.append(str(exc))
    if problems:
        raise RehearsalInputError("\n".join(problems))
    return Plan(
        configs,
        {p: evaluations[p] for p in profiles if p in evaluations},
        test_csvs,
        python,
        version,
    )


def run(args: argparse.Namespace) -> int:
    args.out = args.out.resolve()  # the log paths printed stay valid from any folder
    try:
        plan = plan_rehearsal(args)
    except RehearsalInputError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    progress = Progress()
    if not own_namespaces_allowed():
        progress.step("unshare is not allowed here: the runs share this machine's network")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    root = args.keep or make_root()
    verdicts: list[Verdict] = []
    try:
        verdicts = rehearse(plan, args, root, progress)
    except KeyboardInterrupt:
        progress.step("interrupted: every run was stopped")
        _write_verdicts(args.out, verdicts)
        print(f"interrupted; the logs so far are in {args.out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.keep is None:
            progress.step(f"removing {root}")
            shutil.rmtree(root, ignore_errors=True)
    _write_verdicts(args.out, verdicts)
    engine = ", ".join(sorted({c.engine.kind for c in plan.configs.values()}))
    print_verdicts(verdicts, engine, as_json=args.json)
    progress.step(f"done: {sum(v.passed for v in verdicts)}/{len(verdicts)} runs passed")
    return 0 if all(v.passed for v in verdicts) else 1


def rehearse(plan: Plan, args: argparse.Namespace, root: Path, progress: Progress) -> list[Verdict]:
    """Every profile's runs, interactive then rerun; the shared venvs and wheel built once."""
    own_wheel = None
    if not args.no_rebuild:
        progress.step("our wheel, rebuilt from this checkout")
        (root / "own-wheel").mkdir(parents=True, exist_ok=True)
        own_wheel = build_own_wheel(root / "own-wheel")
    progress.step(f"the image venv: Python {plan.python_version} ({plan.python}) + image wheels")
    image_python = build_image_venv(root / "venv-image", plan.python, args.image_wheels)
    gateway_python = args.gateway_python
    if plan.evaluations and gateway_python is None:
        progress.step("the gateway venv: the image venv + polars and pyarrow from the wheelhouse")
        gateway_python = str(build_gateway_venv(image_python, root / "venv-gw", args.wheelhouse))
    settings = RunSettings(image_python, gateway_python or sys.executable, args.timeout_s, progress)
    verdicts: list[Verdict] = []
    for profile, config in plan.configs.items():
        logs = args.out / profile
        logs.mkdir(parents=True, exist_ok=True)
        evaluation = plan.evaluations.get(profile)
        tree = lay_out(
            root / profile, config, plan.test_csvs[profile], evaluation, args.wheelhouse, own_wheel
        )
        verdicts.append(rehearse_interactive(tree, config, settings, logs))
        if evaluation is not None:
            verdicts.append(rehearse_rerun(tree, config, settings, logs))
    return verdicts


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the runs are stopped and the tree removed on the way out."""
    raise KeyboardInterrupt


def _write_verdicts(out: Path, verdicts: list[Verdict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "verdicts.json").write_text(
        json.dumps([asdict(v) for v in verdicts], indent=2) + "\n", encoding="utf-8"
    )

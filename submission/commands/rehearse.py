"""`python -m submission rehearse`: the kernel run as Kaggle runs it, before a push.

It lays out a Kaggle-shaped tree in a temporary folder (`rehearsal/tree.py`),
runs the kernel there in fresh venvs holding only the Kaggle image's own
packages, interactively and as a competition rerun served to the real gateway
(`rehearsal/runs.py`), and prints a verdict table (`rehearsal/verdict.py`):
install time, time to `serve()`, time to the first answer, rows, fallbacks
with their reasons, wall time, and pass/fail (exit 1 on any failure).

The config is the packaged `kaggle.toml` (or `--config`) with the `--set`
overrides, handed to the kernel through `$AIMO_CONFIG`; `$AIMO_KAGGLE_ROOT`
points the kernel's /kaggle paths at the tree.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from submission.config import PACKAGE_DATA, ConfigError, add_config_arguments, load_config
from submission.rehearsal.runs import RunSettings, rehearse_interactive, rehearse_rerun
from submission.rehearsal.tree import lay_out
from submission.rehearsal.verdict import print_verdicts

PRODUCTION_CONFIG = Path(__file__).resolve().parents[1] / "kaggle.toml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
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
        default=None,
        help="folder holding the competition's kaggle_evaluation (without it: "
        "the built-in replay, and no rerun)",
    )
    parser.add_argument(
        "--test-csv",
        type=Path,
        default=None,
        help="the competition's test.csv (default: the embedded reference problems)",
    )
    parser.add_argument(
        "--gateway-python",
        default=sys.executable,
        help="the gateway's interpreter (needs grpcio, protobuf, pandas, polars)",
    )
    parser.add_argument(
        "--no-rebuild", action="store_true", help="use the wheelhouse's own wheel as it is"
    )
    parser.add_argument("--keep", type=Path, default=None, help="lay the tree here and keep it")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per run")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.profile, args.config_file or PRODUCTION_CONFIG, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    test_csv = args.test_csv or PACKAGE_DATA / f"{config.profile.name}_reference.csv"
    for what, path in [
        ("wheelhouse", args.wheelhouse),
        ("image wheels", args.image_wheels),
        ("test csv", test_csv),
    ]:
        if not path.exists():
            print(f"error: {what} not found: {path}", file=sys.stderr)
            return 2
    settings = RunSettings(args.image_wheels, args.timeout_s, args.gateway_python)
    root = args.keep or Path(tempfile.mkdtemp(prefix="aimo-rehearsal-"))
    try:
        tree = lay_out(
            root, config, test_csv, args.kaggle_evaluation, args.wheelhouse, not args.no_rebuild
        )
        verdicts = [rehearse_interactive(tree, config, settings)]
        if args.kaggle_evaluation is not None:
            verdicts.append(rehearse_rerun(tree, config, settings))
        print_verdicts(verdicts, config, as_json=args.json)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if all(v.passed for v in verdicts) else 1

"""`python -m submission build`: runs the engine build pipeline (build/pipeline.py) by path.

The pipeline lives outside the package (a top-level `build` package would
shadow PyPA's `build`), so this command finds it next to `submission/` in a
checkout and runs it with the same interpreter.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

LOG = logging.getLogger(__name__)
PIPELINE = Path(__file__).resolve().parents[1] / "build" / "pipeline.py"
STAGES = ("fetch", "calibration", "quantize", "drafter", "engine", "package")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(PIPELINE.with_name("pipeline.toml")))
    parser.add_argument("--stage", action="append", choices=STAGES, default=None)
    parser.add_argument("--dry-run", action="store_true", help="print every command, run nothing")
    parser.add_argument("--work-dir", default=None, help="override the config's work_dir")
    parser.add_argument("--force", action="store_true", help="run steps even when up to date")
    parser.add_argument("--skip-checks", action="store_true", help="skip the preflight checks")


def pipeline_argv(args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, str(PIPELINE), "--config", args.config]
    for stage in args.stage or ():
        argv += ["--stage", stage]
    if args.work_dir:
        argv += ["--work-dir", args.work_dir]
    argv += [
        flag
        for flag, on in (
            ("--dry-run", args.dry_run),
            ("--force", args.force),
            ("--skip-checks", args.skip_checks),
        )
        if on
    ]
    return argv


def run(args: argparse.Namespace) -> int:
    if not PIPELINE.is_file():
        LOG.error("no %s: the build pipeline ships with a checkout, not with the wheel", PIPELINE)
        return 2
    return subprocess.run(pipeline_argv(args), check=False).returncode

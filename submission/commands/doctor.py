"""`python -m submission doctor`: the preflight checks (submission/preflight.py) as a table.

Exit code 1 when anything failed.
"""

from __future__ import annotations

import argparse
import sys

from submission.config import ConfigError, add_config_arguments, config_from_args
from submission.preflight import run_checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--no-sandbox", action="store_true", help="skip the sandbox call")


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.table import Table

    checks = run_checks(config, sandbox=not args.no_sandbox)
    table = Table(title=f"doctor (engine: {config.engine.kind}, profile: {config.profile.name})")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    colours = {"ok": "green", "warn": "yellow", "fail": "red"}
    for check in checks:
        table.add_row(check.name, f"[{colours[check.status]}]{check.status}", check.detail)
    Console().print(table)
    return 1 if any(c.status == "fail" for c in checks) else 0

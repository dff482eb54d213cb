"""`python -m submission bench NAME`: benchmarks that print a table next to their anchors."""

from __future__ import annotations

import argparse
import importlib

# benchmark -> module exposing add_arguments(parser) and run(args) -> int
BENCHMARKS: dict[str, str] = {
    "sandbox": "submission.bench.sandbox",
    "harness": "submission.bench.harness",
    "collect": "submission.bench.collect",
    "speed": "submission.bench.speed",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own flags")


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHMARKS[args.name])
    parser = argparse.ArgumentParser(prog=f"python -m submission bench {args.name}")
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(args.rest)) or 0)

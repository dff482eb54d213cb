"""Command line: `python -m submission COMMAND ...`.

Each command lives in its own module, `submission/commands/<command>.py` (dashes
become underscores), imported only when that command runs
(heavy dependencies stay unloaded). A command module exposes
`add_arguments(parser)` and `run(args) -> int` (the exit code), or `main(argv) -> int`
when another parser owns its flags (`build` hands them to the pipeline's).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "replay": (
        "submission.commands.replay",
        "run problems through the gateway replay (default: embedded GSM8K + replay engine)",
    ),
    "simulate": ("submission.commands.simulate", "replay attempt logs as whole competition runs"),
    "collect": (
        "submission.commands.collect",
        "run a problems CSV through the harness, every attempt to its end: an attempt log",
    ),
    "bench": ("submission.commands.bench", "benchmarks: sandbox, harness, speed, collect"),
    "fidelity": ("submission.commands.fidelity", "re-run recorded code blocks, compare outputs"),
    "doctor": (
        "submission.commands.doctor",
        "check this machine: packages, GPU, engine dir, sandbox",
    ),
    "kaggle-metadata": (
        "submission.commands.kaggle_metadata",
        "write or check kaggle_metadata.json",
    ),
    "build": ("submission.commands.build", "engine build pipeline (build/pipeline.toml)"),
    "smoke": ("submission.commands.smoke", "first run on a GPU box: load the engine, verdicts"),
    "standin-model": (
        "submission.commands.standin_model",
        "write a tiny Qwen2 model (random weights, real tokenizer) for `smoke --engine hf`",
    ),
    "vocab": (
        "submission.commands.vocab",
        "fetch or rebuild the harmony family's vocabulary (o200k_base.tiktoken), checked",
    ),
    "rehearse": (
        "submission.commands.rehearse",
        "run the kernel as Kaggle does (interactive and rerun) in a Kaggle-shaped temp tree",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submission", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # httpx logs every request at INFO: thousands of lines per run
        logging.getLogger("httpx").setLevel(logging.WARNING)
    module_name, help_text = COMMANDS[args.command]
    module = importlib.import_module(module_name)
    if hasattr(module, "main"):
        return int(module.main(rest) or 0)
    command_parser = argparse.ArgumentParser(
        prog=f"python -m submission {args.command}", description=help_text
    )
    module.add_arguments(command_parser)
    return int(module.run(command_parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""Write a model server's accepted command-line flags as data, read from its own parser.

    python offline_wheels/dump_server_flags.py vllm OUT.json
    python offline_wheels/dump_server_flags.py sglang OUT.json
    python offline_wheels/dump_server_flags.py transformers OUT.json

Run it in a venv where that server's pinned version is installed (`pip install --no-deps`
of the wheel is enough for the parser, plus the imports it asks for); the launcher
(submission/model_server.py) checks every flag it passes against the file, and the
stand-in server (tests/fakes/vllm_standin.py) accepts exactly the vLLM file's flags.
The committed files were made this way (docs/engines.md, "The model-server launcher").
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any


def _argparse_flags(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """Each option string -> whether it takes a value."""
    return {
        option: action.nargs != 0
        for action in parser._actions  # argparse keeps no public list of its actions
        for option in action.option_strings
        if option not in ("-h", "--help")
    }


def vllm_flags() -> tuple[str, dict[str, bool]]:
    # The parser builds default configs, which detect the device; any platform names the
    # same flags, so a machine without a GPU is told it is a CPU one.
    import vllm.platforms

    vllm.platforms.builtin_platform_plugins["cpu"] = lambda: "vllm.platforms.cpu.CpuPlatform"
    from vllm.entrypoints.openai.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm.entrypoints.openai.api_server"))
    return "vllm.entrypoints.openai.cli_args.make_arg_parser", _argparse_flags(parser)


def sglang_flags() -> tuple[str, dict[str, bool]]:
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    return "sglang.srt.server_args.ServerArgs.add_cli_args", _argparse_flags(parser)


def transformers_flags() -> tuple[str, dict[str, bool]]:
    from transformers.cli.transformers import app  # a click group (huggingface_hub's)

    serve = app.commands["serve"]
    flags: dict[str, bool] = {}
    for param in serve.params:
        for option in [*param.opts, *getattr(param, "secondary_opts", [])]:
            if option.startswith("-") and option != "--help":
                flags[option] = not getattr(param, "is_flag", False)
    return "transformers.cli.serve.Serve (typer command 'serve')", flags


DUMPERS = {
    "vllm": ("vllm", vllm_flags),
    "sglang": ("sglang", sglang_flags),
    "transformers": ("transformers", transformers_flags),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("server", choices=sorted(DUMPERS))
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    distribution, dump = DUMPERS[args.server]
    source, flags = dump()
    data: dict[str, Any] = {
        "server": args.server,
        "version": importlib.metadata.version(distribution),
        "parser": source,
        "takes_value": dict(sorted(flags.items())),
    }
    args.out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"{args.server} {data['version']}: {len(flags)} flags -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A stand-in for `python -m vllm.entrypoints.openai.api_server` (vLLM 0.11.2), as an executable.

No vLLM wheel or GPU here, so the launcher's tests run this instead
(`engine.server.entrypoint = <this file>`). What it shares with vLLM:
- its flags: exactly those of vLLM 0.11.2's own parser
  (submission/data/server_flags/vllm.json, dumped from `make_arg_parser`): an
  unknown flag exits 2 with argparse's "unrecognized arguments", as vLLM does;
- its HTTP: GET /health (503 while loading), GET /v1/models (`owned_by`
  "vllm"), streamed POST /v1/completions with vLLM's fields
  (tests/fakes/completions_server.py, vLLM style: `stop_reason`,
  `include_stop_str_in_output`, `return_token_ids`, `logprobs`, usage);
- a second process in its process group, as vLLM V1's engine-core process.

Its generations are recorded text: the replay engine's ToRA transcripts
(submission/data) for text prompts, and for token-id prompts (the harmony
family) the same transcripts as gpt-oss would write them
(tests/harmony_streams.py: analysis prose, a python tool call per code block,
the boxed closing on the final channel), the recording picked by the seed.
Its logprobs are made up
(`synthetic_top_logprobs`). What it does on purpose, set by environment:
- AIMO_STANDIN_START_S: seconds of "loading" before /health answers 200;
- AIMO_STANDIN_NEVER_READY=1: /health never answers 200 (a start timeout);
- AIMO_STANDIN_CRASH_AT_START=PATH: exit 1 while loading unless PATH exists
  (it creates PATH first, so the restart comes up);
- AIMO_STANDIN_CRASH_AFTER=N with AIMO_STANDIN_CRASH_MARKER=PATH: exit 1 after
  the N-th request, once (PATH marks that it happened);
- AIMO_STANDIN_REQUESTS=PATH: each request body appended there as a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a file: the repository's tests and submission

from submission.config import PACKAGE_DATA, load_config  # noqa: E402
from submission.engines.base import Chunk, Prompt, SamplingParams  # noqa: E402
from submission.engines.replay import ReplayEngine  # noqa: E402
from submission.model_server import ServerFlags  # noqa: E402
from tests.fakes.completions_server import CompletionsServer  # noqa: E402


def vllm_parser() -> argparse.ArgumentParser:
    """vLLM 0.11.2's flags (names and whether each takes a value), nothing else."""
    flags = ServerFlags.load("vllm")
    # No positional model: that is `vllm serve`'s; the api_server module takes only --model.
    parser = argparse.ArgumentParser(prog="vllm.entrypoints.openai.api_server")
    for flag, takes_value in flags.takes_value.items():
        dest = flag.lstrip("-").replace("-", "_")
        if takes_value:
            parser.add_argument(flag, dest=dest)
        else:
            parser.add_argument(flag, dest=dest, action="store_true")
    return parser


class RecordedEngine:
    """Text prompts: the replay engine. Token-id prompts: a recorded generation's gpt-oss
    rounds (built on first use: it needs openai-harmony and its vocabulary)."""

    name, greedy, token_prompts = "standin", False, True
    recordings = 8  # the embedded ToRA generations token prompts are served from

    def __init__(self, text_engine: ReplayEngine) -> None:
        self.text_engine = text_engine
        self._harmony: tuple[Any, list[Any]] | None = None

    def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Chunk]:
        if isinstance(prompt, str):
            return self.text_engine.stream(prompt, params)
        from tests.harmony_streams import ScriptedHarmonyEngine

        family, scripts = self._harmony_scripts()
        script = scripts[(params.seed or 0) % len(scripts)]
        return ScriptedHarmonyEngine(script, family).stream(prompt, params)

    def _harmony_scripts(self) -> tuple[Any, list[Any]]:
        if self._harmony is None:
            from tests.harmony_streams import harmony_family, script_from_tora

            family = harmony_family()
            lines = (PACKAGE_DATA / "tora70b_gsm8k_first250.jsonl").read_text().splitlines()
            generations = [json.loads(line)["code"][0] for line in lines[: self.recordings]]
            self._harmony = family, [script_from_tora(family, g) for g in generations]
        return self._harmony


def log(line: str) -> None:
    print(line, flush=True)


async def serve(args: argparse.Namespace) -> None:
    model = args.model
    name = args.served_model_name or model
    config = load_config("aimo3", None, ["prompt.family=tora"])
    engine = RecordedEngine(ReplayEngine.from_config(config))
    server = CompletionsServer(engine, model_name=name, healthy=False)
    requests_log = os.environ.get("AIMO_STANDIN_REQUESTS")
    crash_after = int(os.environ.get("AIMO_STANDIN_CRASH_AFTER", "0"))
    crash_marker = os.environ.get("AIMO_STANDIN_CRASH_MARKER", "")

    def on_request(request: dict) -> None:
        if requests_log:
            with open(requests_log, "a", encoding="utf-8") as f:
                f.write(json.dumps(request) + "\n")

    def after_request(count: int) -> None:
        if crash_after and count >= crash_after and not Path(crash_marker).exists():
            Path(crash_marker).touch()
            log("ERROR stand-in: EngineCore died unexpectedly (on purpose)")
            os._exit(1)

    server.on_request = on_request
    server.after_request = after_request
    listener = await asyncio.start_server(server._serve, args.host or "0.0.0.0", args.port)
    sizing = (
        f"max_num_seqs {args.max_num_seqs}, gpu_memory_utilization {args.gpu_memory_utilization}"
    )
    log(f"INFO stand-in vLLM 0.11.2: model {model}, {sizing}")
    await asyncio.sleep(float(os.environ.get("AIMO_STANDIN_START_S", "0")))
    crash_at_start = os.environ.get("AIMO_STANDIN_CRASH_AT_START")
    if crash_at_start and not Path(crash_at_start).exists():
        Path(crash_at_start).touch()
        log("ERROR stand-in: CUDA out of memory while loading (on purpose)")
        os._exit(1)
    if os.environ.get("AIMO_STANDIN_NEVER_READY") != "1":
        server.healthy = True
        log(f"INFO Uvicorn running on http://{args.host}:{args.port}")
    async with listener:
        await listener.serve_forever()


def main() -> int:
    args = vllm_parser().parse_args()
    # vLLM V1 runs the model in an engine-core process of its own: one stands in for it.
    subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(3600)"], stdin=subprocess.DEVNULL
    )
    began = time.monotonic()
    try:
        asyncio.run(serve(args))
    finally:
        log(f"INFO stand-in: shutting down after {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

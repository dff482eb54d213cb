"""`python -m submission bench harness`: the harness's own CPU cost per token and per tool call.

An engine that emits tokens as fast as it can (real ToRA transcript text, one
token-sized chunk at a time, yielding to the event loop between chunks as a
real engine's queue does) drives 16 attempts through the real TIR loop, with
an instant code runner that answers with the transcript's recorded output.
Measured with the process CPU clock, in the same run:
- anchor: the same engine drained without the harness (what any consumer pays);
- the TIR loop at ~1k and ~16k tokens per attempt: harness cost per token
  (TIR minus anchor) must not grow with the length of the text;
- the same attempts with code calls: the extra CPU per tool call.
Target: <= 5 us of harness CPU per token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from submission.answer import AnswerRange
from submission.config import PACKAGE_DATA, add_config_arguments, config_from_args
from submission.engines.base import Chunk, SamplingParams
from submission.families.registry import create_family
from submission.families.text import CodeTags, TextFamily
from submission.records import AttemptRecord
from submission.tir import TirLoop

TRANSCRIPTS = PACKAGE_DATA / "tora70b_gsm8k_first250.jsonl"
TARGET_US_PER_TOKEN = 5.0
# Roughly one BPE token per piece: a word with its leading space, a digit, a punctuation run.
TOKEN_PIECES = re.compile(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+")
OUTPUT_MARK = "```output"  # in every code tag style's fed-back output block


@dataclass(frozen=True)
class Round:
    """What the model writes in one round: chunks, then how the round ends."""

    chunks: tuple[Chunk, ...]
    output: str  # the recorded output of the round's code ("" for the last round)


def load_transcripts() -> list[tuple[str, str, str]]:
    """(prose, code, recorded output) of each real ToRA generation with one code block."""
    found = []
    for line in TRANSCRIPTS.read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["code"][0]
        match = re.search(r"```python\n(.*?)```\n```output\n(.*?)```\n(.*)", text, re.DOTALL)
        if match and match.group(3).strip():
            found.append((match.group(3).strip(), match.group(1).strip(), match.group(2)))
    return found


def pieces(text: str) -> list[str]:
    return TOKEN_PIECES.findall(text)


def attempt_script(
    transcripts: list[tuple[str, str, str]], tokens: int, calls: int, tags: CodeTags, offset: int
) -> tuple[Round, ...]:
    """An attempt of about `tokens` tokens: `calls` code rounds, then a boxed answer."""
    rounds: list[Round] = []
    per_round = tokens // (calls + 1)
    index = offset
    for number in range(calls + 1):
        text: list[str] = []
        while len(text) < per_round:
            prose, _, _ = transcripts[index % len(transcripts)]
            text += pieces(prose.replace("\\boxed", "\\mathrm") + "\n\n")
            index += 1
        text = text[:per_round]
        _, code, output = transcripts[index % len(transcripts)]
        if number < calls:
            closing = "" if tags.code_end == tags.stop else f"\n{tags.code_end}\n"
            text += pieces(f"\n{tags.code_begin}\n{code}{closing}")
            final = Chunk("", 1, "stop", stop=tags.stop)
        else:
            text += pieces(" The answer is \\boxed{18}.")
            final = Chunk("", 1, "stop")
            output = ""
        rounds.append(Round((*(Chunk(p, 1) for p in text), final), output))
    return tuple(rounds)


def without_calls(script: tuple[Round, ...]) -> tuple[Round, ...]:
    """The same chunks as one round: the code is written but never stopped at or run."""
    chunks = [
        Chunk(chunk.text, chunk.tokens) if chunk.finish_reason else chunk
        for round_ in script[:-1]
        for chunk in round_.chunks
    ]
    return (Round((*chunks, *script[-1].chunks), ""),)


class FastEngine:
    """Streams pre-built chunks; the round is the number of output blocks in the prompt."""

    name = "fast"
    greedy = False

    def __init__(self, scripts: list[tuple[Round, ...]]) -> None:
        self.scripts = scripts
        # Seconds from handing over a code-end stop to the next round's request, per call:
        # nothing else runs in between (the runner answers without suspending), so this is
        # the harness's whole work for one tool call.
        self.call_seconds: list[float] = []
        self._stopped_at: dict[int, float] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        seed = params.seed or 0
        if seed in self._stopped_at:
            self.call_seconds.append(time.perf_counter() - self._stopped_at.pop(seed))
        script = self.scripts[seed % len(self.scripts)]
        return self._stream(script[min(prompt.count(OUTPUT_MARK), len(script) - 1)], seed)

    async def _stream(self, round_: Round, seed: int) -> AsyncIterator[Chunk]:
        for chunk in round_.chunks:
            await asyncio.sleep(0)  # a real engine's chunks arrive through the event loop
            if chunk.stop is not None:
                self._stopped_at[seed] = time.perf_counter()
            yield chunk


@dataclass(frozen=True)
class InstantResult:
    status: str
    output: str


class InstantRunner:
    """Answers every code call at once with the recorded output of the attempt's round."""

    def __init__(self, engine: FastEngine) -> None:
        self.engine = engine
        self.calls: dict[str, int] = {}

    async def arun(self, code: str, session: str, timeout: float) -> InstantResult:
        done = self.calls.get(session, 0)
        self.calls[session] = done + 1
        script = self.engine.scripts[int(session) % len(self.engine.scripts)]
        return InstantResult("ok", script[min(done, len(script) - 1)].output)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--calls", type=int, default=4, help="code calls per attempt")
    parser.add_argument("--reps", type=int, default=3, help="runs per case (median kept)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    family = create_family(config)
    if not isinstance(family, TextFamily):
        raise SystemExit(f"bench harness scripts text families; prompt.family is {family.name}")
    tags = family.tags
    transcripts = load_transcripts()
    problem = transcripts[0][0]
    prompt = family.render(problem)
    rows = []
    for tokens in (1_000, 16_000):
        with_calls = [
            attempt_script(transcripts, tokens, args.calls, tags, offset=17 * i)
            for i in range(args.streams)
        ]
        # Same chunks, same tokens, with and without the code calls: the difference is the calls.
        for scripts in ([without_calls(s) for s in with_calls], with_calls):
            anchor = _median(args.reps, lambda s=scripts: _engine_only(s, args.streams))
            harness = _median(
                args.reps,
                lambda s=scripts: _through_tir(s, args.streams, config, family, prompt),
            )
            rows.append(_row(tokens, args.streams, anchor, harness))
    results = {"target_us_per_token": TARGET_US_PER_TOKEN, "cases": rows}
    if args.json:
        Console().print_json(json.dumps(results))
    else:
        _print_table(results)
    return 0


def _engine_only(scripts: list[tuple[Round, ...]], streams: int) -> dict[str, float]:
    engine = FastEngine(scripts)

    async def drain(i: int) -> int:
        tokens = 0
        for number in range(len(scripts[i])):
            prompt = OUTPUT_MARK * number
            async for chunk in engine.stream(prompt, SamplingParams(max_tokens=1, seed=i)):
                tokens += chunk.tokens
        return tokens

    async def main() -> int:
        return sum(await asyncio.gather(*(drain(i) for i in range(streams))))

    return _timed(main)


def _through_tir(
    scripts: list[tuple[Round, ...]], streams: int, config: Any, family: TextFamily, prompt: str
) -> dict[str, float]:
    engine = FastEngine(scripts)
    runner = InstantRunner(engine)
    profile = config.profile
    tir = TirLoop(
        engine=engine,
        sandbox=runner,
        family=family,
        config=config.tir,
        answer_range=AnswerRange(profile.answer_min, profile.answer_max, profile.reduce_modulo),
    )
    generation = config.generation
    records = [AttemptRecord(problem_id="bench", attempt_num=i, seed=i) for i in range(streams)]

    async def main() -> int:
        await asyncio.gather(
            *(
                tir.run_attempt(
                    record,
                    prompt,
                    SamplingParams.from_generation(generation, record.seed),
                    session=str(record.attempt_num),
                )
                for record in records
            )
        )
        if any(r.answer != 18 for r in records):
            raise RuntimeError(
                f"bench: attempts did not finish: {[r.finish_reason for r in records]}"
            )
        return sum(r.tokens for r in records)

    timing = _timed(main)
    timing["calls"] = float(sum(r.code_calls for r in records))
    if engine.call_seconds:
        timing["us_per_call_median"] = statistics.median(engine.call_seconds) * 1e6
        timing["us_per_call_p90"] = statistics.quantiles(engine.call_seconds, n=10)[-1] * 1e6
    return timing


def _timed(main: Any) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    tokens = asyncio.run(main())
    return {
        "tokens": float(tokens),
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
    }


def _median(reps: int, case: Any) -> dict[str, float]:
    runs = [case() for _ in range(max(1, reps))]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def _row(
    target: int, streams: int, anchor: dict[str, float], harness: dict[str, float]
) -> dict[str, Any]:
    anchor_us = anchor["cpu_s"] / anchor["tokens"] * 1e6
    total_us = harness["cpu_s"] / harness["tokens"] * 1e6
    return {
        "target_tokens": target,
        "tokens_per_attempt": harness["tokens"] / streams,
        "calls_per_attempt": harness.get("calls", 0.0) / streams,
        "streams": streams,
        "tokens": harness["tokens"],
        "anchor_engine_only_us_per_token": round(anchor_us, 3),
        "tir_us_per_token": round(total_us, 3),
        "harness_us_per_token": round(total_us - anchor_us, 3),
        "harness_cpu_s": round(harness["cpu_s"] - anchor["cpu_s"], 4),
        "calls": harness.get("calls", 0.0),
        "harness_us_per_call_median": round(harness.get("us_per_call_median", 0.0), 1),
        "harness_us_per_call_p90": round(harness.get("us_per_call_p90", 0.0), 1),
    }


def _print_table(results: dict[str, Any]) -> None:
    table = Table(
        title="harness CPU us per token (process CPU; anchor = same engine without the harness)"
    )
    columns = (
        "tok/att",
        "calls/att",
        "streams",
        "anchor",
        "TIR",
        "harness",
        "target",
        "us/call p50",
        "us/call p90",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in results["cases"]:
        table.add_row(
            f"{row['tokens_per_attempt']:.0f}",
            f"{row['calls_per_attempt']:.0f}",
            str(row["streams"]),
            f"{row['anchor_engine_only_us_per_token']:.2f}",
            f"{row['tir_us_per_token']:.2f}",
            f"{row['harness_us_per_token']:.2f}",
            f"{results['target_us_per_token']:.1f}",
            f"{row['harness_us_per_call_median']:.1f}" if row["calls"] else "-",
            f"{row['harness_us_per_call_p90']:.1f}" if row["calls"] else "-",
        )
    Console().print(table)

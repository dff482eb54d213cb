"""`python -m submission smoke --engine-dir DIR`: the first run on a GPU box with an engine.

Starts the sandbox (before CUDA, the designed order), loads the engine, runs a
handful of real prompts (AIMO-3 reference problems) through the TIR loop, and
prints one verdict row per property the run depends on:
tokens/s at 1/8/16 streams; draft acceptance (tokens per engine step) where the
engine counts steps; prefix-cache hits on a second identical prompt where it
reports KV-cache stats; the cut at the family's tool-call stop (`</tool_call>`,
`<|call|>`) with the code run; a
greedy self-stop (the engine's own 10th token as a stop string, so any model,
even random weights, exercises the cut) and the same with a stop token id (where
the engine reports ids); cancel latency; the effective
sampling; and the sandbox after CUDA initialisation. Each row is pass, fail or
n/a (not reported by this engine), with its reason. Exit code 1 on any fail.

`--engine-dir DIR` means `engine.trtllm.engine_dir` (or `engine.hf.model`
with `--engine hf`, the stand-in); any other setting goes through `--set`.
Without an engine to load (no folder, or TensorRT-LLM not installed) it says
so and how to get one, before starting anything: on a machine without a GPU,
`python -m submission standin-model --out DIR`, then `--engine hf
--engine-dir DIR`. The hf engine on CPU gets CPU-sized defaults (`CPU_SIZED`:
32 tokens per stream at 1/2/4 streams, one 256-token attempt), a GPU the full
ones (`GPU_SIZED`); `--max-tokens`, `--attempt-tokens`, `--problems` override
either. Each row is printed (stderr) as it finishes.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from submission.answer import AnswerRange
from submission.config import PACKAGE_DATA, Config, ConfigError, add_config_arguments, load_config
from submission.engines.base import Engine, Prompt, SamplingParams
from submission.engines.registry import create_engine
from submission.families.base import ModelFamily
from submission.families.registry import create_family
from submission.records import AttemptRecord
from submission.sandbox import Sandbox
from submission.tir import TirLoop

Verdict = Literal["pass", "fail", "n/a"]
ROW_TIMEOUT_S = 600.0  # one row's limit: a hung engine fails its row, not the whole command
CANCEL_REPEATS = 3
CANCEL_LIMIT_S = 1.0  # a cancelled stream must end within this


@dataclass(frozen=True)
class Row:
    check: str
    verdict: Verdict
    detail: str


@dataclass(frozen=True)
class SmokeSettings:
    max_tokens: int = 256  # per stream in the throughput rows
    attempt_tokens: int = 4096  # per TIR attempt
    problems: int = 3  # AIMO-3 reference problems run through the TIR loop
    streams: tuple[int, ...] = (1, 8, 16)  # concurrent streams of the throughput rows


GPU_SIZED = SmokeSettings()
# The tiny stand-in on 2 CPU cores: each row in seconds, the whole smoke in about a minute
# (the GPU sizes took over 10 minutes there, silently).
CPU_SIZED = SmokeSettings(max_tokens=32, attempt_tokens=256, problems=1, streams=(1, 2, 4))
HOW_TO_GET_AN_ENGINE = (
    "without a GPU, smoke the hf stand-in: python -m submission standin-model --out MODEL, "
    "then python -m submission smoke --engine hf --engine-dir MODEL (docs/engines.md)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--engine", default="trtllm", help="engine kind (hf = stand-in)")
    parser.add_argument("--engine-dir", default="", help="engine folder (hf: the model folder)")
    parser.add_argument("--max-tokens", type=int, default=None, help="default: CPU/GPU-sized")
    parser.add_argument("--attempt-tokens", type=int, default=None, help="default: CPU/GPU")
    parser.add_argument("--problems", type=int, default=None, help="default: CPU/GPU-sized")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--out", default="", help="also write the rows as JSON to this file")


def missing_engine(config: Config) -> str | None:
    """Why there is no engine to smoke here (and what to do), or None."""
    engine = config.engine
    if engine.kind == "trtllm":
        if "tensorrt_llm" not in sys.modules and importlib.util.find_spec("tensorrt_llm") is None:
            return f"TensorRT-LLM is not installed in this Python; {HOW_TO_GET_AN_ENGINE}"
        if not Path(engine.trtllm.engine_dir).is_dir():
            return (
                f"no engine folder at {engine.trtllm.engine_dir}: give --engine-dir DIR "
                f"(the built engine, docs/build.md); {HOW_TO_GET_AN_ENGINE}"
            )
    if engine.kind == "hf" and not engine.hf.model:
        return f"the hf engine needs a model folder (--engine-dir DIR); {HOW_TO_GET_AN_ENGINE}"
    # A path (not a hub id such as Qwen/Qwen2.5-1.5B) that is no folder: nothing to load.
    model = engine.hf.model
    if engine.kind == "hf" and model.startswith(("/", ".", "~")) and not Path(model).is_dir():
        return f"no model folder at {model}; {HOW_TO_GET_AN_ENGINE}"
    return None


def on_cpu(config: Config) -> bool:
    """Whether the engine runs on this machine's CPU (the hf engine without CUDA)."""
    if config.engine.kind != "hf":
        return False
    device = config.engine.hf.device
    if device != "auto":
        return device == "cpu"
    import torch

    return not torch.cuda.is_available()


def sized(config: Config, args: argparse.Namespace) -> SmokeSettings:
    """CPU- or GPU-sized defaults, with what the flags give instead."""
    base = CPU_SIZED if on_cpu(config) else GPU_SIZED
    given = {
        "max_tokens": args.max_tokens,
        "attempt_tokens": args.attempt_tokens,
        "problems": args.problems,
    }
    return replace(base, **{k: v for k, v in given.items() if v is not None})


def config_for(args: argparse.Namespace) -> Config:
    sets = [f"engine.kind={args.engine}"]
    if args.engine_dir:
        field = "hf.model" if args.engine == "hf" else f"{args.engine}.engine_dir"
        sets.append(f"engine.{field}={args.engine_dir}")
    return load_config(args.profile, args.config_file, [*sets, *args.overrides])


def run(args: argparse.Namespace) -> int:
    try:
        config = config_for(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if (problem := missing_engine(config)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    settings = sized(config, args)
    where = "CPU" if on_cpu(config) else "GPU"
    print(
        f"smoke: {config.engine.kind} engine, {where}-sized: {settings.max_tokens} tokens per "
        f"stream at {'/'.join(map(str, settings.streams))} streams, {settings.problems} "
        f"problem(s) x {settings.attempt_tokens} tokens",
        file=sys.stderr,
    )
    began = time.perf_counter()

    def show(row: Row) -> None:
        seconds = time.perf_counter() - began
        print(f"[{seconds:6.1f} s] {row.check}: {row.verdict} ({row.detail})", file=sys.stderr)

    rows = asyncio.run(run_smoke(config, settings, on_row=show))
    as_json = json.dumps([dataclasses.asdict(r) for r in rows], indent=2)
    if args.out:
        Path(args.out).write_text(as_json + "\n", encoding="utf-8")
    if args.json:
        print(as_json)
    else:
        print_table(rows, config.engine.kind)
    return 1 if any(r.verdict == "fail" for r in rows) else 0


def print_table(rows: list[Row], engine_kind: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"smoke (engine: {engine_kind})")
    for column in ("check", "verdict", "detail"):
        table.add_column(column)
    colours = {"pass": "green", "fail": "red", "n/a": "yellow"}
    for row in rows:
        table.add_row(row.check, f"[{colours[row.verdict]}]{row.verdict}", row.detail)
    Console(width=160).print(table)


async def run_smoke(
    config: Config,
    settings: SmokeSettings = GPU_SIZED,
    on_row: Callable[[Row], None] = lambda row: None,
) -> list[Row]:
    """Every row, in order, each handed to `on_row` once known; a row that raises or hangs
    fails with the reason."""
    rows: list[Row] = []

    def add(new: list[Row]) -> None:
        rows.extend(new)
        for row in new:
            on_row(row)

    family = create_family(config)
    sandbox = Sandbox.from_config(config, family.session_prelude)  # before the engine's CUDA
    started = time.perf_counter()
    try:
        engine = create_engine(config)
        await engine.start()
    except Exception as exc:
        sandbox.close()
        add([Row("engine start", "fail", f"{type(exc).__name__}: {exc}")])
        return rows
    load_s = time.perf_counter() - started
    add([Row("engine start", "pass", f"{engine.name} in {load_s:.1f} s")])
    smoke = Smoke(engine, sandbox, family, config, settings)
    checks: list[tuple[str, Callable[[], Awaitable[list[Row]]]]] = [
        ("tokens/s", smoke.throughput),
        (f"stop at {family.tool_call_stop}", smoke.tool_call_stop),
        ("greedy self-stop", smoke.self_stop),
        ("stop token id", smoke.stop_token),
        ("prefix cache", smoke.prefix_cache),
        ("cancel latency", smoke.cancel_latency),
        ("effective sampling", smoke.effective_sampling),
        ("sandbox after CUDA", smoke.sandbox_after_cuda),
    ]
    try:
        for name, check in checks:
            try:
                add(await asyncio.wait_for(check(), ROW_TIMEOUT_S))
            except Exception as exc:  # a broken check is a failed row, and the rest still run
                add([Row(name, "fail", f"{type(exc).__name__}: {exc}")])
    finally:
        await engine.close()
        sandbox.close()
    return rows


class Smoke:
    """The checks, sharing one engine, one sandbox and one prompt."""

    def __init__(
        self,
        engine: Engine,
        sandbox: Sandbox,
        family: ModelFamily,
        config: Config,
        settings: SmokeSettings,
    ) -> None:
        self.engine = engine
        self.sandbox = sandbox
        self.family = family
        self.config = config
        self.settings = settings
        with (PACKAGE_DATA / "aimo3_reference.csv").open(encoding="utf-8", newline="") as handle:
            reference = [row["problem"] for row in csv.DictReader(handle)]
        self.problems = reference[: max(1, settings.problems)]
        self.prompt = family.render(self.problems[0])
        self.params = replace(
            SamplingParams.from_generation(config.generation, config.generation.base_seed),
            max_tokens=settings.max_tokens,
        )

    async def drain(self, prompt: Prompt, params: SamplingParams) -> tuple[int, str, Any]:
        tokens, text, last = 0, [], None
        async for chunk in self.engine.stream(prompt, params):
            tokens += chunk.tokens
            text.append(chunk.text)
            last = chunk
        return tokens, "".join(text), last

    async def throughput(self) -> list[Row]:
        counters = getattr(self.engine, "counters", None)
        before = (counters.tokens, counters.steps) if counters is not None else None
        await self.drain(self.prompt, replace(self.params, max_tokens=16))  # warm-up
        measured = []
        for streams in self.settings.streams:
            params = [replace(self.params, seed=i) for i in range(streams)]
            started = time.perf_counter()
            done = await asyncio.gather(*(self.drain(self.prompt, p) for p in params))
            seconds = time.perf_counter() - started
            tokens = sum(t for t, _, _ in done)
            errors = [last.error for _, _, last in done if last is None or last.error]
            measured.append((streams, tokens / seconds, errors))
        ok = all(rate > 0 and not errors for _, rate, errors in measured)
        detail = ", ".join(f"{n}: {rate:.1f}" for n, rate, _ in measured)
        problems = [e for _, _, errors in measured for e in errors]
        rows = [
            Row(
                f"tokens/s ({'/'.join(map(str, self.settings.streams))} streams)",
                "pass" if ok else "fail",
                f"{detail} tokens/s, {self.settings.max_tokens} tokens per stream"
                + (f"; errors: {problems[:2]}" if problems else ""),
            )
        ]
        if counters is None or before is None:
            rows.append(Row("draft acceptance", "n/a", "this engine does not count steps"))
        else:
            tokens, steps = counters.tokens - before[0], counters.steps - before[1]
            per_step = tokens / steps if steps else 0.0
            facts = getattr(self.engine, "facts", None)
            drafter = facts is not None and facts.has_drafter
            verdict: Verdict = "pass" if steps and (per_step > 1.0 or not drafter) else "fail"
            rows.append(
                Row(
                    "draft acceptance",
                    verdict,
                    f"{per_step:.2f} tokens per step over {steps} steps"
                    + ("" if drafter else " (no drafter: 1 expected)"),
                )
            )
        return rows

    async def tool_call_stop(self) -> list[Row]:
        """Real prompts through the TIR loop: a round ending at the tool-call stop runs its code."""
        stop = self.family.tool_call_stop
        calls: list[tuple[str, str, str]] = []

        class Recording:
            def __init__(self, sandbox: Sandbox) -> None:
                self.sandbox = sandbox

            async def arun(self, code: str, session: str, timeout: float) -> Any:
                result = await self.sandbox.arun(code, session=session, timeout=timeout)
                calls.append((code, result.status, result.output[-160:]))
                return result

        tir = TirLoop(
            self.engine,
            Recording(self.sandbox),
            self.family,
            self.config.tir,
            AnswerRange(self.config.profile.answer_min, self.config.profile.answer_max),
        )
        records = []
        for index, problem in enumerate(self.problems):
            record = AttemptRecord(problem_id=f"smoke-{index}", attempt_num=0, seed=index)
            params = replace(self.params, max_tokens=self.settings.attempt_tokens, seed=index)
            await tir.run_attempt(record, self.family.render(problem), params, f"smoke-{index}")
            self.sandbox.close_session(f"smoke-{index}")
            records.append(record)
        # The stop string appears once per code call (in the fed-back output block), never in
        # the model's own text: the engine cut the text there.
        leaked = [r.problem_id for r in records if r.text.count(stop) != r.code_calls]
        detail = (
            f"{len(calls)} code calls in {len(records)} attempts "
            f"({sum(s == 'ok' for _, s, _ in calls)} ok), finish: "
            + ", ".join(str(r.finish_reason) for r in records)
        )
        failed = [f"{status}: {output!r}" for _, status, output in calls if status != "ok"]
        if failed:
            detail += f"; not ok: {failed[:2]}"
        if not calls:
            reason = f"no attempt reached {stop}: {detail}"
            return [Row("stop at " + stop, "fail", reason)]
        cut = all(stop not in code for code, _, _ in calls)
        ran = any(status == "ok" for _, status, _ in calls)
        verdict: Verdict = "pass" if cut and ran and not leaked else "fail"
        if leaked:
            detail += f"; {stop} left in the text of {leaked}"
        return [Row("stop at " + stop, verdict, detail)]

    async def self_stop(self) -> list[Row]:
        """Greedy text, then the same request with its own 10th-token text as a stop string."""
        greedy = replace(self.params, temperature=0.0, max_tokens=32, stop=())
        _, text, _ = await self.drain(self.prompt, greedy)
        pieces = [text[i : i + 4] for i in range(8, max(8, len(text) - 4), 4)]
        stop = next((p for p in pieces if p.strip() and text.find(p) >= 8), "")
        if not stop:
            return [Row("greedy self-stop", "fail", f"greedy text too short: {text!r}")]
        _, again, last = await self.drain(self.prompt, replace(greedy, stop=(stop,)))
        expected = text[: text.find(stop)]
        ok = last is not None and last.stop == stop and again == expected
        detail = f"stop {stop!r} after {len(expected)} chars" + (
            "" if ok else f"; got {again!r}, stop {getattr(last, 'stop', None)!r}"
        )
        return [Row("greedy self-stop", "pass" if ok else "fail", detail)]

    async def stop_token(self) -> list[Row]:
        """Greedy ids, then the same request with its own 10th token id as a stop token id."""
        greedy = replace(self.params, temperature=0.0, max_tokens=32, stop=())
        chunks = [chunk async for chunk in self.engine.stream(self.prompt, greedy)]
        ids = [token for chunk in chunks for token in chunk.token_ids]
        if not ids:
            return [Row("stop token id", "n/a", f"{self.engine.name} reports no token ids")]
        if len(ids) < 10:
            return [Row("stop token id", "fail", f"greedy run too short: {len(ids)} ids")]
        stop = ids[9]
        first = ids.index(stop)
        again = [
            chunk
            async for chunk in self.engine.stream(
                self.prompt, replace(greedy, stop_token_ids=(stop,))
            )
        ]
        got = [token for chunk in again for token in chunk.token_ids]
        last = again[-1]
        ok = last.finish_reason == "stop" and last.stop_token == stop and got == ids[: first + 1]
        detail = f"stop token {stop} after {first} tokens" + (
            ""
            if ok
            else f"; got {len(got)} ids, {last.finish_reason}, stop_token {last.stop_token}"
        )
        return [Row("stop token id", "pass" if ok else "fail", detail)]

    async def prefix_cache(self) -> list[Row]:
        reused = getattr(self.engine, "reused_kv_blocks", None)
        if reused is None:
            return [Row("prefix cache", "n/a", f"{self.engine.name} has no prefix cache")]
        short = replace(self.params, max_tokens=8)
        prompt = self.family.render(self.problems[-1] + " (second identical prompt)")
        await self.drain(prompt, short)
        before = reused()
        await self.drain(prompt, short)
        after = reused()
        if before is None or after is None:
            return [Row("prefix cache", "fail", "the engine reported no KV-cache stats")]
        hits = after - before
        return [
            Row(
                "prefix cache",
                "pass" if hits > 0 else "fail",
                f"{hits} KV blocks reused by the second identical prompt",
            )
        ]

    async def cancel_latency(self) -> list[Row]:
        """Close one of N running streams (the second most of the throughput rows, 8 on a GPU)
        after its first chunk: time until it has ended."""
        long = replace(self.params, max_tokens=self.config.generation.max_tokens)
        running = sorted(self.settings.streams)[-2] if len(self.settings.streams) > 1 else 1
        seconds = []
        for _ in range(CANCEL_REPEATS):
            others = [
                asyncio.create_task(self.drain(self.prompt, replace(self.params, seed=i)))
                for i in range(running - 1)
            ]
            victim = self.engine.stream(self.prompt, long)
            await anext(victim)
            started = time.perf_counter()
            await victim.aclose()
            seconds.append(time.perf_counter() - started)
            await asyncio.gather(*others)
        median = statistics.median(seconds)
        return [
            Row(
                "cancel latency",
                "pass" if median < CANCEL_LIMIT_S else "fail",
                f"median {median * 1e3:.2f} ms, max {max(seconds) * 1e3:.2f} ms "
                f"({running} streams, {CANCEL_REPEATS} repeats)",
            )
        ]

    async def effective_sampling(self) -> list[Row]:
        stream = self.engine.stream(self.prompt, replace(self.params, max_tokens=4))
        first = await anext(stream)
        await stream.aclose()
        asked = (
            f"asked temperature={self.params.temperature:g} top_p={self.params.top_p:g} "
            f"top_k={self.params.top_k} min_p={self.params.min_p:g} "
            f"repetition_penalty={self.params.repetition_penalty:g}"
        )
        applied = first.meta.get("sampling")
        if applied is None:
            return [Row("effective sampling", "pass", f"as asked ({asked})")]
        # Knobs a drafter ignores are reported, not failed; a greedy drafter makes K attempts
        # identical, which fails.
        greedy = str(applied).startswith("greedy")
        return [Row("effective sampling", "fail" if greedy else "pass", f"{applied} ({asked})")]

    async def sandbox_after_cuda(self) -> list[Row]:
        """The sandbox started before the engine, and a new one started now, both run code."""
        code = "import math\nprint(sum(i * i for i in range(10)), math.factorial(5))"
        # Its own session uids: a sandbox's sessions kill(-1) their uid when they end.
        sandbox_config = replace(
            self.config.sandbox, first_session_uid=self.config.sandbox.first_session_uid + 5000
        )
        late_config = replace(self.config, sandbox=sandbox_config)
        late = await asyncio.to_thread(Sandbox.from_config, late_config)
        try:
            results = [
                await sandbox.arun(code, session="smoke-cuda", timeout=30.0)
                for sandbox in (self.sandbox, late)
            ]
        finally:
            late.close()
        cuda = _cuda_initialised()
        ok = all(r.status == "ok" and r.stdout.strip() == "285 120" for r in results)
        detail = (
            f"started before the engine: {results[0].status} ({results[0].seconds * 1e3:.1f} ms); "
            f"after: {results[1].status} ({results[1].seconds * 1e3:.1f} ms); "
            f"CUDA initialised in this process: {cuda}"
        )
        return [Row("sandbox after CUDA", "pass" if ok else "fail", detail)]


def _cuda_initialised() -> str:
    torch = sys.modules.get("torch")
    if torch is None:
        return "no (torch not imported)"
    return "yes" if torch.cuda.is_initialized() else "no"

"""Collect an attempt log: every attempt of every problem run to its own end, many at once.

Each attempt goes through the Solver's own attempt path (`Solver.run_attempt`:
the prompt, the TIR loop, the sandbox) on a `TappedEngine`, with no early stop
and no budget across problems; its caps are `generation.max_tokens` and
`collect.attempt_timeout_s`. `collect.concurrency` attempts are in flight at
once, taken in problem order across problems, so a server's batch stays full
(the idea of NeMo-Skills' `max_concurrent_requests`, nemo_skills/inference/
generate.py @025b485).

Loss-free: each attempt's row is committed to its chunk's shard the moment it
ends (`attempt_store`); a run started again with the same command skips every
committed (problem_id, attempt_num), so a run killed at any moment loses at
most the attempts in flight and repeats none. An attempt the engine failed
(finish reason "error") is not committed: it is not an outcome of the model,
and the next run retries it.

Chunks, for many machines (SLURM-array style, as NeMo-Skills' `num_chunks` /
`chunk_id`, nemo_skills/pipeline/generate.py @01add20): chunk i of n owns the
problems at positions p % n == i of the problems file; every chunk writes its
own shard into the same folder, and `merge` reads them all.

The folder: `collect.json` (the settings the rows were collected with; a run
with other settings is refused), `shards/*.jsonl` (the committed rows), and
what `merge` writes: `attempts.parquet` (the log `simulate --attempts` reads),
`generations.parquet` (the texts, zstd), `passk.md`, `passk.csv`, `passk.png`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from submission.attempt_store import (
    TEXT_FIELD,
    Key,
    ShardWriter,
    StoreRead,
    pack_text,
    read_store,
    texts,
)
from submission.config import Config, as_dict
from submission.engines.base import Prompt
from submission.engines.tap import AttemptWatch, TappedEngine, watching
from submission.log_stats import plot, render_markdown, score_table
from submission.problem_rows import ProblemRow
from submission.records import AttemptRecord
from submission.report import ATTEMPT_SCHEMA, atomic_path, default_file_mode
from submission.solver import Solver

log = logging.getLogger(__name__)

SETTINGS_FILE = "collect.json"
GENERATION_BATCH = 1000  # texts per parquet batch when merging
SHARDS = "shards"
# Columns the collector adds to the run's attempt log (report.ATTEMPT_SCHEMA).
COLLECT_SCHEMA: dict[str, Any] = {
    "expected": pl.Int64,  # the problems file's answer (null: not given)
    "problem_sha": pl.String,  # ProblemRow.digest of the text it was collected for
    "concurrency": pl.Float64,  # mean streams in flight while its requests were open
    "engine_s": pl.Float64,  # seconds its requests were open (time_s less code calls)
    "started_at": pl.Float64,  # Unix time it started
    "chunk": pl.String,  # "i/n": the chunk that ran it
}
# What each engine kind's rows depend on besides the generation settings.
ENGINE_IDENTITY = {
    "hf": "model",
    "openai": "model",
    "trtllm": "engine_dir",
    "sim": "attempts_csv",
    "replay": "transcripts",
}


class CollectError(ValueError):
    """A collect run that must not start (other settings, another problem text)."""


@dataclass(frozen=True)
class Chunking:
    """Chunk `index` of `count`: the problems at positions p with p % count == index."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise CollectError(f"chunk {self.index}/{self.count}: need 0 <= index < count")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def shard_name(self) -> str:
        return f"chunk-{self.index}-of-{self.count}.jsonl"

    def owns(self, position: int) -> bool:
        return position % self.count == self.index


def engine_identity(config: Config) -> str:
    """What the configured engine serves: its model, engine folder or log."""
    kind = config.engine.kind
    value = as_dict(config)["engine"][kind].get(ENGINE_IDENTITY.get(kind, ""), "")
    return ",".join(value) if isinstance(value, tuple | list) else str(value)


def settings_of(config: Config) -> dict[str, Any]:
    """The settings a row's outcome depends on (not concurrency, caps or the sandbox)."""
    settings = as_dict(config)
    return {
        "profile": settings["profile"]["name"],
        "prompt": settings["prompt"],
        "generation": settings["generation"],
        "tir": settings["tir"],
        "engine": {"kind": config.engine.kind, "identity": engine_identity(config)},
    }


def check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Record the settings on the first run; refuse a later run whose settings differ."""
    path = out_dir / SETTINGS_FILE
    wanted = json.loads(json.dumps(settings))  # tuples as lists, as read back
    if not path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{SETTINGS_FILE}.", dir=out_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(wanted, indent=1) + "\n")
            os.chmod(tmp, default_file_mode())
            with contextlib.suppress(FileExistsError):  # a chunk started at once wrote it
                os.link(tmp, path)  # never replaces: the first run's settings stay
        finally:
            os.unlink(tmp)
    recorded = json.loads(path.read_text(encoding="utf-8"))
    differ = sorted(_differences(recorded, wanted))
    if differ:
        raise CollectError(
            f"{out_dir} holds attempts collected with other settings ({', '.join(differ)}): "
            "rerun with the same settings, or collect into another --out"
        )


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            found += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return found
    return [] if a == b else [prefix]


def check_problems(store: StoreRead, problems: Sequence[ProblemRow]) -> None:
    """Refuse problems whose text differs from the text their committed rows were run on."""
    digests = {p.problem_id: p.digest for p in problems}
    changed = sorted(
        {
            str(row["problem_id"])
            for row in store.rows
            if digests.get(str(row["problem_id"]), row["problem_sha"]) != row["problem_sha"]
        }
    )
    if changed:
        raise CollectError(
            f"the text of problem(s) {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} "
            "differs from the text their collected attempts were run on: use another --out"
        )


def plan_work(
    problems: Sequence[ProblemRow], attempts: int, chunk: Chunking, done: set[Key]
) -> list[tuple[ProblemRow, int]]:
    """This chunk's attempts not yet committed, problem by problem."""
    return [
        (problem, num)
        for position, problem in enumerate(problems)
        if chunk.owns(position)
        for num in range(attempts)
        if (problem.problem_id, num) not in done
    ]


def attempt_row(
    record: AttemptRecord, watch: AttemptWatch, problem: ProblemRow, started_at: float, chunk: str
) -> dict[str, Any]:
    """The committed row: the run's attempt columns, the collector's, the text compressed."""
    if problem.answer is not None:
        record.is_correct = record.answer == problem.answer
    row = record.row()
    row |= {
        "expected": problem.answer,
        "problem_sha": problem.digest,
        "concurrency": watch.concurrency,
        "engine_s": watch.open_s,
        "started_at": started_at,
        "chunk": chunk,
        TEXT_FIELD: pack_text(record.text),
    }
    return row


@dataclass
class CollectOutcome:
    committed: int = 0
    failed: int = 0  # ended with an engine error: not committed, retried by the next run
    first_error: str = ""


class Collector:
    """Runs planned attempts through a Solver's attempt path and commits each row."""

    def __init__(
        self,
        config: Config,
        solver: Solver,
        writer: ShardWriter,
        chunk: Chunking,
        on_row: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not isinstance(solver.engine, TappedEngine):
            raise TypeError("the collector's Solver must run on a TappedEngine")
        self.config = config
        self.solver = solver
        self.writer = writer
        self.chunk = chunk
        self.on_row = on_row
        self.outcome = CollectOutcome()

    async def run(self, work: Sequence[tuple[ProblemRow, int]]) -> CollectOutcome:
        pending = iter(work)  # shared by the workers: each item is taken once
        prompts: dict[str, Prompt | None] = {}

        async def worker() -> None:
            for problem, attempt_num in pending:
                if problem.problem_id not in prompts:
                    prompts[problem.problem_id] = self._render(problem)
                prompt = prompts[problem.problem_id]
                if prompt is None:
                    self.outcome.failed += 1
                    continue
                await self._attempt(problem, attempt_num, prompt)

        workers = min(self.config.collect.concurrency, len(work))
        await asyncio.gather(*(worker() for _ in range(workers)))
        return self.outcome

    def _render(self, problem: ProblemRow) -> Prompt | None:
        """The problem's prompt, or None (its attempts fail, not kept) when it can't render."""
        try:
            return self.solver.render(problem.problem)
        except Exception as exc:  # e.g. a family without its vocabulary
            self._failed(f"{problem.problem_id}: render failed: {type(exc).__name__}: {exc}")
            return None

    def _failed(self, why: str) -> None:
        if not self.outcome.first_error:
            self.outcome.first_error = why
            log.error("attempt failed (not kept): %s", why)

    async def _attempt(self, problem: ProblemRow, attempt_num: int, prompt: Prompt) -> None:
        record = self.solver.new_attempt(problem.problem_id, attempt_num)
        watch = AttemptWatch()
        started_at = time.time()
        cap = self.config.collect.attempt_timeout_s
        try:
            with watching(watch):
                await asyncio.wait_for(self.solver.run_attempt(record, prompt), timeout=cap)
        except TimeoutError:
            record.finish_reason = "timeout"
            record.error_message = f"wall cap of {cap:g} s (collect.attempt_timeout_s)"
        except Exception as exc:  # a harness bug: keep collecting, retry it next run
            log.exception("attempt %s-%d crashed", problem.problem_id, attempt_num)
            record.finish_reason = "error"
            record.error_message = f"{type(exc).__name__}: {exc}"
        if record.finish_reason == "error":
            self.outcome.failed += 1
            why = record.error_message or "engine error"
            self._failed(f"{problem.problem_id}-{attempt_num}: {why}")
            return
        row = attempt_row(record, watch, problem, started_at, str(self.chunk))
        self.writer.append(row)
        self.outcome.committed += 1
        if self.on_row is not None:
            self.on_row(row)


@dataclass
class MergeResult:
    """What `merge` found in the folder and wrote."""

    attempts: int
    problems: int
    store: StoreRead
    table: pl.DataFrame
    written: dict[str, Path] = field(default_factory=dict)


def merge(out_dir: Path) -> MergeResult:
    """Every shard's rows into the attempt log, the generations, and the pass@k/maj@k table
    (nothing is written while the folder holds no row)."""
    store = read_store(out_dir / SHARDS)
    if store.duplicates or store.torn_tails or store.bad_lines:
        log.warning(
            "store: %d duplicate rows ignored, torn last lines in %s, unreadable lines %s",
            store.duplicates,
            store.torn_tails or "none",
            store.bad_lines or "none",
        )
    if not store.rows:
        return MergeResult(0, 0, store, pl.DataFrame())
    rows = sorted(store.rows, key=lambda r: (str(r["problem_id"]), int(r["attempt_num"])))
    schema = ATTEMPT_SCHEMA | COLLECT_SCHEMA
    attempts = pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema)
    expected = {str(r["problem_id"]): r.get("expected") for r in rows}
    table = score_table(attempts, expected)
    title = f"pass@k / maj@k: {attempts['problem_id'].n_unique()} problems, {len(rows)} attempts"
    written = {
        "attempts": _write(out_dir / "attempts.parquet", attempts.write_parquet),
        "generations": _write(
            out_dir / "generations.parquet", lambda p: _write_generations(out_dir / SHARDS, p)
        ),
        "table": _write(
            out_dir / "passk.md", lambda p: p.write_text(render_markdown(table, title), "utf-8")
        ),
        "table_csv": _write(out_dir / "passk.csv", table.write_csv),
        "plot": _write(out_dir / "passk.png", lambda p: plot(table, p, title)),
    }
    return MergeResult(len(rows), attempts["problem_id"].n_unique(), store, table, written)


def _write_generations(shards: Path, path: Path) -> None:
    """The texts, streamed from the shards in batches (a big log's texts never all in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [("problem_id", pa.string()), ("attempt_num", pa.int64()), ("text", pa.string())]
    )
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        stream = texts(shards)
        while batch := list(itertools.islice(stream, GENERATION_BATCH)):
            keys, values = zip(*batch, strict=True)
            columns = [[k[0] for k in keys], [k[1] for k in keys], list(values)]
            writer.write_table(pa.Table.from_arrays([pa.array(c) for c in columns], schema=schema))


def _write(path: Path, writer: Callable[[Path], object]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return path

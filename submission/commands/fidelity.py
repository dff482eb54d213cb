"""`python -m submission fidelity`: re-run recorded code blocks, compare with recorded outputs.

Every ```python block that a transcript follows with an ```output block is run
through the sandbox (each generation's blocks in one session, in order) and
our output is compared with the recorded one by `classify_mismatch`, which the
TIR loop also uses to classify replay divergences. Then the state after a
timeout: generated multi-turn sequences with a slow or crashing cell in the
middle (submission/bench/state_after_timeout.py), and the share whose later
cells still see every earlier variable, per path (interrupt, restore, crash).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from submission.bench import state_after_timeout
from submission.config import PACKAGE_DATA, add_config_arguments, config_from_args
from submission.families.registry import create_family
from submission.mismatch import KINDS, MismatchKind, classify_mismatch

if TYPE_CHECKING:
    from submission.sandbox import Sandbox

log = logging.getLogger(__name__)

# The embedded ToRA samples (first 250 GSM8K problems of each model).
EMBEDDED_TRANSCRIPTS = (
    PACKAGE_DATA / "tora70b_gsm8k_first250.jsonl",
    PACKAGE_DATA / "toracode34b_gsm8k_first250.jsonl",
)

_BLOCK = re.compile(r"```python\n(.*?)```\n```output\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One recorded code block and what its executor printed."""

    source: str  # transcript file name
    idx: int  # problem index in the transcript
    position: int  # block number within the generation
    code: str
    recorded: str


@dataclass(frozen=True)
class Outcome:
    block: Block
    ours: str
    status: str
    kind: MismatchKind


def read_blocks(path: Path) -> Iterator[list[Block]]:
    """Each generation's code blocks (those with a recorded output), in order."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            for text in row["code"]:
                blocks = [
                    Block(path.name, int(row["idx"]), i, code, output)
                    for i, (code, output) in enumerate(_BLOCK.findall(text))
                ]
                if blocks:
                    yield blocks


async def replay_generations(
    sandbox: Sandbox, generations: list[list[Block]], timeout: float, concurrency: int
) -> list[Outcome]:
    """Run every generation's blocks in one session each, `concurrency` sessions at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(number: int, blocks: list[Block]) -> list[Outcome]:
        session = f"fidelity-{number}"
        outcomes = []
        async with gate:
            try:
                for block in blocks:
                    result = await sandbox.arun(block.code, session=session, timeout=timeout)
                    # The sandbox reports a timeout by its status; what the model is told
                    # is the TIR loop's to word: compare as the same error, told differently.
                    shown = "TimeoutError\n" if result.status == "timeout" else result.output
                    kind = classify_mismatch(shown, block.recorded)
                    outcomes.append(Outcome(block, result.output, result.status, kind))
            finally:
                sandbox.close_session(session)
        return outcomes

    per_generation = await asyncio.gather(*(one(n, g) for n, g in enumerate(generations)))
    return [outcome for outcomes in per_generation for outcome in outcomes]


def summarize(outcomes: list[Outcome]) -> dict[str, object]:
    counts = collections.Counter(o.kind for o in outcomes)
    total = len(outcomes)
    return {
        "blocks": total,
        "match_rate": counts["match"] / total if total else 0.0,
        "kinds": {kind: counts[kind] for kind in KINDS},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--transcripts",
        nargs="*",
        type=Path,
        default=list(EMBEDDED_TRANSCRIPTS),
        help="ToRA-format JSONL files (default: the two embedded ToRA samples)",
    )
    parser.add_argument("--limit", type=int, default=0, help="generations per file (0 = all)")
    parser.add_argument("--concurrency", type=int, default=4, help="sessions at once")
    parser.add_argument("--show", type=int, default=5, help="mismatches to print per kind")
    parser.add_argument(
        "--sequences", type=int, default=120, help="state-after-timeout sequences (0 = none)"
    )
    parser.add_argument(
        "--sequence-timeout", type=float, default=0.3, help="the slow cell's timeout (s)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from submission.sandbox import Sandbox

    config = config_from_args(args)
    generations: list[list[Block]] = []
    for path in args.transcripts:
        if not path.is_file():
            log.error("transcript file not found: %s", path)
            return 2
        file_generations = list(read_blocks(path))
        generations += file_generations[: args.limit] if args.limit else file_generations
    started = time.monotonic()
    concurrency = max(1, args.concurrency)
    with Sandbox.from_config(config, create_family(config).session_prelude) as sandbox:
        outcomes = asyncio.run(
            replay_generations(sandbox, generations, config.tir.code_timeout_s, concurrency)
        )
        sequences = state_after_timeout.sequences(args.sequences)
        state = asyncio.run(
            state_after_timeout.run_sequences(
                sandbox, sequences, args.sequence_timeout, concurrency
            )
        )
    summary = summarize(outcomes)
    summary["state_after_timeout"] = state_after_timeout.summarize(state)
    summary["seconds"] = round(time.monotonic() - started, 2)
    console = Console()
    if args.json:
        mismatches = [asdict(o) for o in outcomes if o.kind != "match"]
        console.print_json(json.dumps({**summary, "mismatches": mismatches}))
        return 0
    table = Table(title=f"sandbox fidelity: {summary['blocks']} recorded code blocks")
    table.add_column("kind")
    table.add_column("blocks", justify="right")
    table.add_column("share", justify="right")
    for kind, count in summary["kinds"].items():  # type: ignore[union-attr]
        table.add_row(kind, str(count), f"{count / max(1, len(outcomes)):.2%}")
    console.print(table)
    console.print(f"match rate {summary['match_rate']:.2%} in {summary['seconds']} s")
    for path, row in summary["state_after_timeout"].items():  # type: ignore[union-attr]
        console.print(
            f"state after timeout, {path} path: later cells saw every earlier variable in "
            f"{row['intact_rate']:.1%} of {row['sequences']} sequences "
            f"(slow cell ended {row['slow_cell_ended']})",
            highlight=False,
        )
    shown = collections.Counter[str]()
    for outcome in outcomes:
        if outcome.kind != "match" and shown[outcome.kind] < args.show:
            shown[outcome.kind] += 1
            b = outcome.block
            console.print(
                f"[bold]{outcome.kind}[/] {b.source}#{b.idx} block {b.position} "
                f"({outcome.status}): ours={outcome.ours!r} recorded={b.recorded!r}",
                markup=True,
                highlight=False,
            )
    return 0

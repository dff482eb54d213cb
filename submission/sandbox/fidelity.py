"""`python -m submission fidelity`: re-run recorded code blocks, compare with recorded outputs.

Every ```python block that a transcript follows with an ```output block is run
through the sandbox (each generation's blocks in one session, in order) and
our output is compared with the recorded one by `classify_mismatch`, which the
TIR loop also uses to classify replay divergences.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from submission.config import add_config_arguments, config_from_args

if TYPE_CHECKING:
    from submission.sandbox import Sandbox

LOG = logging.getLogger(__name__)

MismatchKind = Literal[
    "match", "whitespace", "float_format", "truncation", "error_text", "randomness", "semantic"
]
KINDS: tuple[MismatchKind, ...] = (
    "match", "whitespace", "float_format", "truncation", "error_text", "randomness", "semantic",
)  # fmt: skip
DEFAULT_TRANSCRIPTS = Path(__file__).resolve().parents[3] / "shared" / "data" / "transcripts"
TORA_FILES = ("tora70b_gsm8k.jsonl", "toracode34b_gsm8k.jsonl")

_BLOCK = re.compile(r"```python\n(.*?)```\n```output\n(.*?)```", re.DOTALL)
_CUT_MARKERS = ("<output cut>", "...", "…")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
# The last line of a traceback, or an executor's one-line error report: "NameError: ...".
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit|Interrupt))\b:?(.*)$")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT_RTOL = 1e-6


def classify_mismatch(ours: str, recorded: str) -> MismatchKind:
    """How our output for a code block differs from the recorded one (first rule that holds).

    - ``match``: equal once leading and trailing whitespace of the whole text is
      removed (executors frame the output block differently).
    - ``whitespace``: equal once every run of whitespace becomes one space.
    - ``float_format``: the same text with the same numbers, written differently
      (``18.0`` against ``18``, ``0.30000000000000004`` against ``0.3``; relative
      tolerance 1e-6).
    - ``truncation``: one side was cut (it ends with a cut marker such as
      ``<output cut>`` or ``...``, or is simply shorter) and is a prefix of the other.
    - ``error_text``: both report an error of the same exception type, told
      differently (a full traceback against a one-line report, other wording, the
      timeout message of another executor).
    - ``randomness``: differs only in what changes from run to run: memory
      addresses (``0x7f...``), or the same tokens in another order (set and dict
      order under hash randomisation).
    - ``semantic``: anything else: a real difference in what the code computed.
    """
    a, b = ours.strip(), recorded.strip()
    if a == b:
        return "match"
    if " ".join(a.split()) == " ".join(b.split()):
        return "whitespace"
    if _same_numbers(a, b):
        return "float_format"
    if _is_truncation(a, b) or _is_truncation(b, a):
        return "truncation"
    error_a, error_b = _error_type(a), _error_type(b)
    if error_a is not None and error_b is not None:
        both_timeouts = "Timeout" in error_a and "Timeout" in error_b
        if error_a == error_b or both_timeouts:
            return "error_text"
    if _ADDRESS.sub("0x", a) == _ADDRESS.sub("0x", b) or sorted(a.split()) == sorted(b.split()):
        return "randomness"
    return "semantic"


def _is_truncation(cut: str, full: str) -> bool:
    stem = cut
    for marker in _CUT_MARKERS:
        stem = stem.removesuffix(marker).rstrip()
    return bool(stem) and len(stem) < len(full) and full.startswith(stem)


def _error_type(text: str) -> str | None:
    """The exception type named by the text's last line, if it is an error report."""
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines[-3:]):
        match = _ERROR_LINE.match(line.strip())
        if match:
            return match.group(1)
    return None


def _same_numbers(a: str, b: str) -> bool:
    numbers_a, numbers_b = _NUMBER.findall(a), _NUMBER.findall(b)
    if not numbers_a or len(numbers_a) != len(numbers_b):
        return False
    if _NUMBER.sub("#", a).split() != _NUMBER.sub("#", b).split():
        return False
    return all(
        math.isclose(float(x), float(y), rel_tol=_FLOAT_RTOL, abs_tol=1e-12)
        for x, y in zip(numbers_a, numbers_b, strict=True)
    )


# -- the fidelity run ---------------------------------------------------------------------


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
                    kind = classify_mismatch(result.output, block.recorded)
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
        default=[DEFAULT_TRANSCRIPTS / name for name in TORA_FILES],
        help="ToRA-format JSONL files (default: both ToRA files in ../shared/data/transcripts)",
    )
    parser.add_argument("--limit", type=int, default=0, help="generations per file (0 = all)")
    parser.add_argument("--concurrency", type=int, default=4, help="sessions at once")
    parser.add_argument("--show", type=int, default=5, help="mismatches to print per kind")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from submission.sandbox import Sandbox

    config = config_from_args(args)
    generations: list[list[Block]] = []
    for path in args.transcripts:
        if not path.is_file():
            LOG.error("transcript file not found: %s", path)
            return 2
        file_generations = list(read_blocks(path))
        generations += file_generations[: args.limit] if args.limit else file_generations
    started = time.monotonic()
    with Sandbox.from_config(config) as sandbox:
        outcomes = asyncio.run(
            replay_generations(
                sandbox, generations, config.tir.code_timeout_s, max(1, args.concurrency)
            )
        )
    summary = summarize(outcomes)
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

"""The replay engine: recorded real generations, served as if a model wrote them now.

It serves a text model family (families/text.py), reading the problem back from
the rendered prompt. Each recording (a ToRA-format JSONL record: question, gt,
code=[generation], pred) is split at the family's code stop string into rounds:
the model's text of round j, then the output the recording's authors got for
that round's code. A stream serves round j of the recording chosen by the
request's seed, where j is the number of code-output blocks already in the
prompt: so the harness runs the code in its own sandbox, appends its own output
(never the recorded one), and the engine continues with the recorded text after
the recorded output block. The recorded output rides along in the round's last
chunk (`meta`), so the harness can log where its output differs.

The engine is stateless across requests: everything it needs is in the prompt.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

from submission.config import PACKAGE_DATA, Config
from submission.engines.base import Chunk, EngineError, Prompt, SamplingParams
from submission.families.registry import create_family
from submission.families.text import CodeTags, PromptTemplate, TextFamily

EMBEDDED_TRANSCRIPTS = (
    PACKAGE_DATA / "tora70b_gsm8k_first250.jsonl",
    PACKAGE_DATA / "toracode34b_gsm8k_first250.jsonl",
)
# A rough stand-in for a BPE tokenizer: words, single punctuation marks, runs of spaces.
_PSEUDO_TOKEN = re.compile(r"\w+|[^\w\s]|\s+")


@dataclass(frozen=True)
class Recording:
    """One recorded generation, split into rounds around its code outputs."""

    source: str  # file stem the recording came from
    expected: str  # the data set's answer (gt)
    predicted: str  # the answer the recording's authors extracted
    rounds: tuple[str, ...]  # model text of each round, the stop string left out
    outputs: tuple[str, ...]  # recorded code output after each round but the last


def split_rounds(text: str, tags: CodeTags) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split a generation into model rounds and the recorded outputs between them."""
    block_head, _, block_tail = tags.output_block.partition("{output}")
    close = block_tail.rstrip("\n")
    rounds: list[str] = []
    outputs: list[str] = []
    pos = 0
    while (at := text.find(tags.stop, pos)) >= 0:
        rounds.append(text[pos:at])
        body_start = (
            at + len(block_head) if text.startswith(block_head, at) else at + len(tags.stop)
        )
        body_end = text.find(close, body_start)
        if body_end < 0:  # an output block the recording never closed: the rest is output
            outputs.append(text[body_start:])
            return tuple(rounds), tuple(outputs)
        outputs.append(text[body_start:body_end])
        pos = body_end + len(close)
        if text.startswith("\n", pos) and block_tail.endswith("\n"):
            pos += 1
    rounds.append(text[pos:])
    return tuple(rounds), tuple(outputs)


def normalize_question(text: str) -> str:
    return " ".join(text.split())


def load_recordings(paths: Iterable[Path], tags: CodeTags) -> dict[str, list[Recording]]:
    """Recordings by normalised question text, in file order (seed i picks the i-th)."""
    by_question: dict[str, list[Recording]] = {}
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise EngineError(f"cannot read transcripts {path}: {exc}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                generation = record["code"][0]
                question = record["question"]
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
                raise EngineError(
                    f"{path}:{number}: not a ToRA transcript record ({exc})"
                ) from None
            rounds, outputs = split_rounds(generation, tags)
            pred = record.get("pred") or [""]
            by_question.setdefault(normalize_question(question), []).append(
                Recording(
                    source=Path(path).stem,
                    expected=str(record.get("gt", "")),
                    predicted=str(pred[0]),
                    rounds=rounds,
                    outputs=outputs,
                )
            )
    return by_question


class ReplayEngine:
    """Serves recorded generations, stopping at the code tags like a real engine."""

    name = "replay"
    greedy = False
    token_prompts = False

    def __init__(
        self,
        recordings: dict[str, list[Recording]],
        template: PromptTemplate,
        tags: CodeTags,
        tokens_per_s: float = 0.0,
        chunk_tokens: int = 16,
        known: str = "the embedded problems",
    ) -> None:
        self.recordings = recordings
        self.known = known  # what a prompt without a recording is told the engine knows
        self.template = template
        self.tags = tags
        self.tokens_per_s = tokens_per_s
        self.chunk_tokens = max(1, chunk_tokens)

    @classmethod
    def from_config(cls, config: Config) -> ReplayEngine:
        family = create_family(config)
        if not isinstance(family, TextFamily):
            raise EngineError(
                f"replay serves text-family recordings; prompt.family {family.name!r} "
                "renders token ids (choose openmath or tora)"
            )
        tags = family.tags
        paths = [Path(p) for p in config.engine.replay.transcripts] or list(EMBEDDED_TRANSCRIPTS)
        known = (
            f"the problems of {', '.join(config.engine.replay.transcripts)}"
            if config.engine.replay.transcripts
            else "the embedded problems (submission/data/gsm8k_first250.csv)"
        )
        return cls(
            load_recordings(paths, tags),
            family.template,
            tags,
            tokens_per_s=config.engine.replay.tokens_per_s,
            chunk_tokens=config.engine.replay.chunk_tokens,
            known=known,
        )

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def recordings_for(self, problem: str) -> list[Recording]:
        return self.recordings.get(normalize_question(problem), [])

    async def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Chunk]:
        if not isinstance(prompt, str):
            yield Chunk("", 0, finish_reason="error", error="replay: takes text prompts only")
            return
        problem = self.template.problem_of(prompt)
        choices = self.recordings_for(problem) if problem is not None else []
        if not choices:
            why = "no recorded generation for this problem: the replay engine knows only "
            why += self.known
            yield Chunk("", 0, finish_reason="error", error=why)
            return
        recording = choices[(params.seed or 0) % len(choices)]
        round_index = self.template.generation_of(prompt).count(self.tags.stop)
        if round_index >= len(recording.rounds):
            yield Chunk("", 0, finish_reason="stop")  # the recording ended here
            return
        stops_at_code = self.tags.stop in params.stop and round_index < len(recording.outputs)
        text = recording.rounds[round_index]
        if not stops_at_code and round_index < len(recording.outputs):
            # Asked not to stop at code: serve the recorded rest, outputs included.
            text = self._rest_of(recording, round_index)
        pieces = _PSEUDO_TOKEN.findall(text)
        batches = [
            pieces[i : i + self.chunk_tokens] for i in range(0, len(pieces), self.chunk_tokens)
        ]
        budget = params.max_tokens
        delay = self.chunk_tokens / self.tokens_per_s if self.tokens_per_s > 0 else 0.0
        for number, batch in enumerate(batches or [[]], 1):
            batch = batch[:budget]
            budget -= len(batch)
            last = number >= len(batches)
            if budget <= 0 and not last:
                yield Chunk("".join(batch), len(batch), finish_reason="length")
                return
            if not last:
                yield Chunk("".join(batch), len(batch))
                await asyncio.sleep(delay)
            elif stops_at_code:
                meta = {"recorded_output": recording.outputs[round_index]}
                yield Chunk("".join(batch), len(batch), "stop", stop=self.tags.stop, meta=meta)
            else:
                yield Chunk("".join(batch), len(batch), finish_reason="stop")

    def _rest_of(self, recording: Recording, round_index: int) -> str:
        parts: list[str] = []
        for j in range(round_index, len(recording.rounds)):
            parts.append(recording.rounds[j])
            if j < len(recording.outputs):
                parts.append(self.tags.format_output(recording.outputs[j]))
        return "".join(parts)

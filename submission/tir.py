"""One attempt: generate -> stop at code end -> run the code -> feed its output back -> ...

As in NeMo-Skills' code execution (the recipe's), the attempt generates to the end:
the end of the model's text, max tokens, the code-call limit (the round past it is
not run; the generation ends there), a code end with no code block open (NeMo-Skills
ends the generation there too), an engine error, or cancellation by the solver
(early stop or deadline). `tir.stop_at_boxed` (off by default) also ends it at a
complete \\boxed{} answer outside code and after the reasoning. Whatever happens,
the attempt's record is final when `run_attempt` returns or is cancelled.

Per chunk the loop does constant work: it appends the chunk and looks for a
box only in a short tail, so the cost never grows with the length of the text.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Protocol

from submission.answer import AnswerRange, extract_answer, last_boxed
from submission.config import TirConfig
from submission.engines.base import Chunk, Engine, SamplingParams
from submission.mismatch import classify_mismatch
from submission.prompt import CodeTags
from submission.records import AttemptRecord

log = logging.getLogger(__name__)

# How much recent text the per-chunk box check looks at (a boxed integer is short).
_BOX_TAIL_CHARS = 256
# Ends after which the model had its say; only these let a closing "the answer is N" vote.
_FINISHED = frozenset({"stop", "boxed"})


class CodeRunner(Protocol):
    """The part of the Sandbox seam an attempt needs."""

    async def arun(self, code: str, session: str, timeout: float) -> _ExecResultLike: ...


class _ExecResultLike(Protocol):
    status: str

    @property
    def output(self) -> str: ...  # stdout + stderr; stand-in runners may give only this


@dataclass(frozen=True)
class TirLoop:
    """Runs attempts for one engine, sandbox and set of code tags."""

    engine: Engine
    sandbox: CodeRunner
    tags: CodeTags
    config: TirConfig
    answer_range: AnswerRange

    async def run_attempt(
        self, record: AttemptRecord, prompt: str, params: SamplingParams, session: str
    ) -> None:
        """Run one attempt to its end, filling `record` as it goes."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        parts: list[str] = []
        stops = params.stop if self.tags.stop in params.stop else (*params.stop, self.tags.stop)
        try:
            while record.finish_reason is None:
                remaining = params.max_tokens - record.tokens
                if remaining <= 0:
                    record.finish_reason = "length"
                    break
                round_params = replace(params, max_tokens=remaining, stop=stops)
                round_start = len(parts)
                final = await self._generate_round(
                    record, prompt + "".join(parts), round_params, parts
                )
                if final is None:  # a complete \boxed{} answer: done
                    record.finish_reason = "boxed"
                elif final.finish_reason == "stop" and final.stop == self.tags.stop:
                    if record.tokens >= params.max_tokens:
                        # No tokens left to read the output: NeMo-Skills runs no code then.
                        record.finish_reason = "length"
                    else:
                        await self._run_code(record, parts, round_start, final, session)
                elif final.finish_reason == "error":
                    record.finish_reason = "error"
                    record.error_message = final.error
                else:
                    record.finish_reason = final.finish_reason or "stop"
        finally:
            if record.finish_reason is None:
                record.finish_reason = "cancelled"
            record.text = "".join(parts)
            finished = record.finish_reason in _FINISHED
            record.answer = self.answer_range.apply(extract_answer(record.text, finished))
            record.time_s = loop.time() - started

    async def _generate_round(
        self, record: AttemptRecord, prompt: str, params: SamplingParams, parts: list[str]
    ) -> Chunk | None:
        """Stream one round into `parts`; the final chunk, or None when a box completed."""
        tail = ""
        stream = self.engine.stream(prompt, params)
        try:
            async for chunk in stream:
                parts.append(chunk.text)
                record.tokens += chunk.tokens
                record.add_entropies(chunk.token_entropies)
                if "sampling" in chunk.meta:
                    record.sampling = str(chunk.meta["sampling"])
                if chunk.finish_reason is not None:
                    return chunk
                if self.config.stop_at_boxed:
                    tail = (tail + chunk.text)[-_BOX_TAIL_CHARS:]
                    if ("\\boxed" in tail or "\\fbox" in tail) and last_boxed(tail):
                        if self._is_final_box("".join(parts)):
                            return None
                        tail = ""  # this box does not count; look for the next one
            return Chunk("", 0, finish_reason="error", error="stream ended without a finish reason")
        finally:
            await stream.aclose()  # aborts the request in the engine when we leave early

    async def _run_code(
        self,
        record: AttemptRecord,
        parts: list[str],
        round_start: int,
        final: Chunk,
        session: str,
    ) -> None:
        code = self._open_code_block("".join(parts[round_start:]))
        if code is None:  # a code end with no code block open: the generation ends here
            record.finish_reason = "stop"
            return
        if record.code_calls >= self.config.max_code_calls:
            record.finish_reason = "max_code_calls"
            return
        record.code_calls += 1
        result = await self.sandbox.arun(code, session=session, timeout=self.config.code_timeout_s)
        if result.status != "ok":
            record.errors += 1
        stdout = getattr(result, "stdout", None)
        stderr = getattr(result, "stderr", "") if stdout is not None else ""
        shown = self.tags.output.render(
            result.output if stdout is None else stdout,
            stderr,
            result.status,
            self.config.max_output_chars,
            self.config.truncation_marker,
        )
        parts.append(self.tags.format_output(shown))
        recorded = final.meta.get("recorded_output")
        if recorded is not None:
            self._note_divergence(record, shown, str(recorded))

    def _is_final_box(self, text: str) -> bool:
        """Whether the text's last box is an answer: outside code and after the reasoning."""
        box = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
        reasoning_end = self.tags.reasoning_end
        if reasoning_end and text.rfind(reasoning_end, 0, box) < 0:
            return False
        begin = text.rfind(self.tags.code_begin, 0, box)
        if begin < 0:
            return True
        return text.find(self.tags.code_end, begin + len(self.tags.code_begin), box) >= 0

    def _open_code_block(self, text: str) -> str | None:
        """The code of the code block still open at the end of `text`, or None.

        `text` ends where the engine stopped (the stop string left out). Where the
        stop string is the code end (openmath), a block is open when the last code
        begin comes after the last code end, as NeMo-Skills checks; where the model
        closes its block itself (ToRA), when there is a code begin at all.
        """
        begin = text.rfind(self.tags.code_begin)
        if begin < 0:
            return None
        code = text[begin + len(self.tags.code_begin) :]
        if self.tags.code_end == self.tags.stop:
            if self.tags.code_end in code:
                return None
        else:
            code = code.rstrip().removesuffix(self.tags.code_end)
        # Leading blank lines go, as IPython drops them before it runs a cell (so line
        # numbers in error messages are the ones NeMo-Skills' IPython reports).
        return code.strip("\n")

    @staticmethod
    def _note_divergence(record: AttemptRecord, ours: str, recorded: str) -> None:
        kind = classify_mismatch(ours, recorded)
        if kind != "match":
            record.output_mismatches += 1
            record.mismatch_kinds.append(kind)

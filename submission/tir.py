"""One attempt: generate -> stop at a tool call -> run the code -> feed its output back -> ...

As in NeMo-Skills' code execution (the recipe's), the attempt generates to the end:
the end of the model's text, max tokens, the code-call limit (the round past it is
not run; the generation ends there), a tool-call stop with no code to run
(NeMo-Skills ends the generation there too), an engine error, or cancellation by
the solver (early stop or deadline). `tir.stop_at_boxed` (off by default) also ends
it at a complete final answer, as the family's transcript judges it. Whatever
happens, the attempt's record is final when `run_attempt` returns or is cancelled.

The loop knows no model family: the family's `Transcript` (families/) parses each
chunk (constant work per chunk), says at a round's end whether to run code, formats
the tool reply, gives the next prompt, the record's text and the answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from submission.answer import AnswerRange
from submission.config import TirConfig
from submission.engines.base import Chunk, Engine, Prompt, SamplingParams
from submission.families.base import ModelFamily, ToolCall, ToolResult, Transcript
from submission.mismatch import classify_mismatch
from submission.records import AttemptRecord

log = logging.getLogger(__name__)
_Stop = TypeVar("_Stop", str, int)

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
    """Runs attempts for one engine, sandbox and model family."""

    engine: Engine
    sandbox: CodeRunner
    family: ModelFamily
    config: TirConfig
    answer_range: AnswerRange

    def engine_mismatch(self) -> str | None:
        """Why this engine cannot serve this family (a token-id family on a text engine)."""
        if self.family.token_prompts and not getattr(self.engine, "token_prompts", False):
            return (
                f"the {self.family.name} model family renders token ids, and engine "
                f"{self.engine.name!r} takes text prompts only"
            )
        return None

    async def run_attempt(
        self, record: AttemptRecord, prompt: Prompt, params: SamplingParams, session: str
    ) -> None:
        """Run one attempt to its end, filling `record` as it goes."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        transcript = self.family.new_transcript(prompt)
        round_params = replace(
            params,
            stop=_merged(params.stop, self.family.stop),
            stop_token_ids=_merged(params.stop_token_ids, self.family.stop_token_ids),
        )
        try:
            if (mismatch := self.engine_mismatch()) is not None:
                record.finish_reason = "error"
                record.error_message = mismatch
            while record.finish_reason is None:
                remaining = params.max_tokens - record.tokens
                if remaining <= 0:
                    record.finish_reason = "length"
                    break
                final = await self._generate_round(
                    record, transcript, replace(round_params, max_tokens=remaining)
                )
                if final is None:  # a complete final answer: done
                    record.finish_reason = "boxed"
                elif (call := transcript.end_round(final)) is not None:
                    if record.tokens >= params.max_tokens:
                        # No tokens left to read the output: NeMo-Skills runs no code then.
                        record.finish_reason = "length"
                    else:
                        await self._run_code(record, transcript, call, final, session)
                elif final.finish_reason == "error":
                    record.finish_reason = "error"
                    record.error_message = final.error
                else:
                    record.finish_reason = final.finish_reason or "stop"
        finally:
            if record.finish_reason is None:
                record.finish_reason = "cancelled"
            record.text = transcript.text
            finished = record.finish_reason in _FINISHED
            record.answer = self.answer_range.apply(transcript.answer(finished))
            record.time_s = loop.time() - started

    async def _generate_round(
        self, record: AttemptRecord, transcript: Transcript, params: SamplingParams
    ) -> Chunk | None:
        """Stream one round into the transcript; the final chunk, or None at a final answer."""
        stream = self.engine.stream(transcript.next_prompt(), params)
        try:
            async for chunk in stream:
                answered = transcript.feed(chunk)
                record.tokens += chunk.tokens
                record.add_entropies(chunk.token_entropies)
                if "sampling" in chunk.meta:
                    record.sampling = str(chunk.meta["sampling"])
                if chunk.finish_reason is not None:
                    return chunk
                if answered:
                    return None
            return Chunk("", 0, finish_reason="error", error="stream ended without a finish reason")
        finally:
            await stream.aclose()  # aborts the request in the engine when we leave early

    async def _run_code(
        self,
        record: AttemptRecord,
        transcript: Transcript,
        call: ToolCall,
        final: Chunk,
        session: str,
    ) -> None:
        if call.code is None:  # a tool-call stop with no code to run: the generation ends here
            record.finish_reason = "stop"
            return
        if record.code_calls >= self.config.max_code_calls:
            record.finish_reason = "max_code_calls"
            return
        record.code_calls += 1
        result = await self.sandbox.arun(
            call.code, session=session, timeout=self.config.code_timeout_s
        )
        if result.status != "ok":
            record.errors += 1
        stdout = getattr(result, "stdout", None)
        stderr = getattr(result, "stderr", "") if stdout is not None else ""
        shown = transcript.add_tool_result(
            ToolResult(result.output if stdout is None else stdout, stderr, result.status)
        )
        recorded = final.meta.get("recorded_output")
        if recorded is not None:
            self._note_divergence(record, shown, str(recorded))

    @staticmethod
    def _note_divergence(record: AttemptRecord, ours: str, recorded: str) -> None:
        kind = classify_mismatch(ours, recorded)
        if kind != "match":
            record.output_mismatches += 1
            record.mismatch_kinds.append(kind)


def _merged(asked: tuple[_Stop, ...], needed: tuple[_Stop, ...]) -> tuple[_Stop, ...]:
    """The request's stops with the family's added (each once, the request's order first)."""
    return (*asked, *(item for item in needed if item not in asked))

"""The `sim` engine: synthetic attempts drawn from an attempt log, for timing work.

Each stream plays one logged attempt of one logged problem: it decodes that
attempt's token count at the engine's shared rate, R1 / (1 + a*(n-1)) tokens/s
per stream with n streams open, its code calls spaced evenly over those tokens
(each keeps the stream off the engine for `code_call_s`, freeing its share of
the rate), then ends with `\\boxed{ANSWER}` and finish reason "stop". Attempts
cut off in the recording (is_none=1) never finish: they run until cancelled or
`max_tokens`. Answers are reduced modulo the profile's `answer_max + 1`, so the
sim plays the competition it runs in (the embedded log's answers are AIMO-3's,
6,258-95,368: under AIMO-2's 0-999 every one would be out of range). Time is
the running event loop's, so under `looptime` a 5-hour schedule takes seconds
of real time. Closing a stream aborts it and frees its
share of the rate at once. The default log is the embedded synthetic one.

Which logged problem a prompt plays: the one whose marker
(`SimEngine.problem_text(problem_id)`) the prompt contains, else one chosen by
a hash of the prompt. Which attempt: a draw seeded by the problem and
`params.seed`, so reruns are identical.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from submission.attempt_log import (
    DEFAULT_ATTEMPTS,
    AttemptLogError,
    LoggedAttempt,
    LoggedProblem,
    engine_calibration,
    load_attempt_log,
    problems_from_log,
)
from submission.engines.base import Chunk, EngineError, SamplingParams

MARKER = "sim-problem:"


class SimEngine:
    name = "sim"
    greedy = False
    token_prompts = False

    def __init__(
        self,
        problems: Sequence[LoggedProblem],
        single_stream_rate: float,
        contention: float,
        chunk_s: float = 1.0,
        start_delay_s: float = 0.0,
        error_rate: float = 0.0,
        code_call_s: float = 0.0,
        answer_modulo: int | None = None,
    ) -> None:
        if not problems:
            raise EngineError("sim engine: the attempt log has no problems")
        if single_stream_rate <= 0 or chunk_s <= 0:
            raise EngineError("sim engine: rate and chunk_s must be positive")
        self.problems = {p.problem_id: p for p in problems}
        self.single_stream_rate = single_stream_rate
        self.contention = contention
        self.chunk_s = chunk_s
        self.start_delay_s = start_delay_s
        self.error_rate = error_rate
        self.code_call_s = code_call_s
        self.answer_modulo = answer_modulo
        self.active = 0  # streams open now: they share the engine's rate
        self.tokens_decoded = 0  # all streams, for tests that check cancelled ones stop costing
        self._started = False

    @classmethod
    def from_config(cls, config: Any) -> SimEngine:
        sim = config.engine.sim
        path = Path(sim.attempts_csv) if sim.attempts_csv else DEFAULT_ATTEMPTS
        try:
            frame = load_attempt_log(path)
        except AttemptLogError as exc:
            raise EngineError(f"sim engine: {exc} (set engine.sim.attempts_csv)") from None
        engine = engine_calibration(frame, sim)
        return cls(
            problems_from_log(frame),
            single_stream_rate=engine.single_stream_rate * sim.speed,
            code_call_s=engine.code_call_s,
            contention=sim.contention,
            chunk_s=sim.chunk_s,
            start_delay_s=sim.start_delay_s,
            error_rate=sim.error_rate,
            answer_modulo=config.profile.answer_max + 1,
        )

    @staticmethod
    def problem_text(problem_id: str) -> str:
        """A problem statement that makes this engine play logged problem `problem_id`."""
        return f"Simulated problem ({MARKER}{problem_id})."

    @staticmethod
    def problems_frame(problems: Sequence[LoggedProblem]) -> pl.DataFrame:
        """A problems file (id, problem, answer) this engine plays as `problems`: each
        logged problem's marker text and its right answer (null where none was right)."""
        return pl.DataFrame(
            {
                "id": [p.problem_id for p in problems],
                "problem": [SimEngine.problem_text(p.problem_id) for p in problems],
                "answer": [p.correct_answer for p in problems],
            },
            schema={"id": pl.String, "problem": pl.String, "answer": pl.Int64},
        )

    async def start(self) -> None:
        if not self._started:
            await asyncio.sleep(self.start_delay_s)
            self._started = True

    async def close(self) -> None:
        self._started = False

    def stream_rate(self) -> float:
        """Tokens/s each open stream decodes now."""
        return self.single_stream_rate / (1.0 + self.contention * max(0, self.active - 1))

    def pick(self, prompt: str, seed: int | None) -> tuple[LoggedProblem, LoggedAttempt]:
        problem = self._problem_for(prompt)
        rng = random.Random(f"{problem.problem_id}/{seed}")
        return problem, rng.choice(problem.attempts)

    def _problem_for(self, prompt: str) -> LoggedProblem:
        at = prompt.rfind(MARKER)
        if at >= 0:
            pid = prompt[at + len(MARKER) :].split(")", 1)[0]
            if pid in self.problems:
                return self.problems[pid]
        digest = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
        ids = sorted(self.problems)
        return self.problems[ids[digest % len(ids)]]

    async def stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        problem, attempt = self.pick(prompt, params.seed)
        rng = random.Random(f"{problem.problem_id}/{params.seed}/error")
        fails_at = (
            rng.uniform(0.1, 0.9) * attempt.tokens if rng.random() < self.error_rate else None
        )
        goal = float(attempt.tokens) if attempt.finishes else float("inf")
        limit = float(params.max_tokens)
        # Token counts at which a code call pauses the stream off the engine.
        piece = attempt.tokens / (attempt.code_calls + 1)
        calls = [piece * k for k in range(1, attempt.code_calls + 1)]
        decoded = 0.0
        reported = 0
        self.active += 1
        try:
            while True:
                if calls and decoded >= calls[0] and decoded < min(goal, limit):
                    calls.pop(0)
                    self.active -= 1
                    try:
                        await asyncio.sleep(self.code_call_s)
                    finally:
                        self.active += 1
                    continue
                end = min(
                    goal,
                    limit,
                    fails_at if fails_at is not None else float("inf"),
                    calls[0] if calls else float("inf"),
                )
                rate = self.stream_rate()
                step = min(self.chunk_s, (end - decoded) / rate)
                await asyncio.sleep(step)
                decoded = min(end, decoded + rate * step)
                new = int(decoded) - reported
                reported += new
                self.tokens_decoded += new
                if decoded < end or (calls and end == calls[0]):
                    yield Chunk(text="", tokens=new)
                elif fails_at is not None and end == fails_at:
                    yield Chunk("", new, finish_reason="error", error="sim: injected engine error")
                    return
                elif end == goal:
                    # Ended by EOS, not a stop string (so never mistaken for a code stop).
                    answer = attempt.answer
                    if answer is not None and self.answer_modulo is not None:
                        answer %= self.answer_modulo
                    yield Chunk(f"\\boxed{{{answer}}}", new, finish_reason="stop")
                    return
                else:
                    yield Chunk(text="", tokens=new, finish_reason="length")
                    return
        finally:
            self.active -= 1

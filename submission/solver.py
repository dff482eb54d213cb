"""One problem: K attempts in parallel, early stop on a settled vote, a hard deadline.

The attempts run as asyncio tasks. After each one finishes (and at least every
`solver.policy_tick_s`) the early-stop policy looks at the votes; when it says
stop, or the deadline comes, the rest are cancelled (which aborts their engine
requests). The selection policy picks the answer; when no attempt answered, the
configured fallback is returned.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from submission.answer import AnswerRange
from submission.config import Config
from submission.engines.base import Engine, EngineError, Prompt, SamplingParams
from submission.families.base import ModelFamily
from submission.families.registry import create_family
from submission.policy import FinishedAttempt, Policy, ProblemState, RunningAttempt
from submission.records import AttemptRecord
from submission.tir import CodeRunner, TirLoop

log = logging.getLogger(__name__)


@dataclass
class ProblemResult:
    problem_id: str
    answer: int
    attempts: list[AttemptRecord]
    seconds: float
    budget_s: float
    stop_reason: str  # the early-stop reason, "deadline", or why the fallback was used
    used_fallback: bool = False
    top_votes: int = 0
    extra: dict[str, object] = field(default_factory=dict)


class Solver:
    """Solves one problem at a time with the engine, the sandbox and the policy it is given."""

    def __init__(
        self,
        engine: Engine,
        sandbox: CodeRunner,
        config: Config,
        policy: Policy,
        family: ModelFamily | None = None,
    ) -> None:
        """`family` defaults to the one `config.prompt.family` names."""
        self.engine = engine
        self.sandbox = sandbox
        self.config = config
        self.policy = policy
        self.family = family or create_family(config)
        self.answer_range = AnswerRange(
            config.profile.answer_min, config.profile.answer_max, config.profile.reduce_modulo
        )
        self.tir = TirLoop(engine, sandbox, self.family, config.tir, self.answer_range)

    def check_ready(self) -> None:
        """Load the family and check the engine can serve it; raises the reason (at start)."""
        self.family.load()
        if (mismatch := self.tir.engine_mismatch()) is not None:
            raise EngineError(mismatch)

    def attempts_for_engine(self) -> int:
        """K, or 1 when the engine decodes greedily (K identical attempts would be wasted).

        `engine.greedy` already accounts for engine.trtllm.allow_greedy_drafter."""
        if self.engine.greedy:
            return 1
        return self.policy.attempts

    def problem_error(self, problem: object) -> str | None:
        """Why a problem cannot be attempted at all, or None."""
        if not isinstance(problem, str):
            return f"problem is {type(problem).__name__}, not text"
        if not problem.strip():
            return "problem is empty"
        limit = self.config.solver.max_problem_chars
        if len(problem) > limit:
            return f"problem has {len(problem)} characters (limit {limit})"
        return None

    def render(self, problem: str) -> Prompt:
        """The prompt every attempt at `problem` continues (the family renders it)."""
        return self.family.render(problem)

    def new_attempt(self, problem_id: str, attempt_num: int) -> AttemptRecord:
        """Attempt `attempt_num`'s empty record; it samples with seed base_seed + attempt_num."""
        seed = self.config.generation.base_seed + attempt_num
        return AttemptRecord(problem_id, attempt_num=attempt_num, seed=seed)

    async def run_attempt(self, record: AttemptRecord, prompt: Prompt) -> None:
        """One attempt at a rendered prompt, to its own end or until cancelled.

        The record is final when this returns or is cancelled; the attempt's sandbox
        session is closed then. `solve` runs K of these; the collector runs them one by one.
        """
        params = SamplingParams.from_generation(self.config.generation, record.seed)
        session = f"{record.problem_id}-a{record.attempt_num}"
        try:
            await self.tir.run_attempt(record, prompt, params, session)
        finally:
            self._close_session(session)

    async def solve(self, problem_id: str, problem: str, budget_s: float) -> ProblemResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        if (reason := self.problem_error(problem)) is not None:
            return self.fallback(problem_id, [], 0.0, budget_s, reason)
        try:
            prompt = self.render(problem)
        except Exception as exc:  # a family that cannot render (e.g. no vocabulary) loses nothing
            log.exception("%s: the %s family cannot render it", problem_id, self.family.name)
            return self.fallback(problem_id, [], 0.0, budget_s, f"render failed: {exc}")
        records = [self.new_attempt(problem_id, i) for i in range(self.attempts_for_engine())]
        tasks: dict[asyncio.Task[None], AttemptRecord] = {}
        for record in records:
            tasks[asyncio.create_task(self.run_attempt(record, prompt))] = record
        finished: list[AttemptRecord] = []  # in order of finishing (the tie-break uses it)
        stop_reason = "deadline"
        deadline = started + budget_s
        try:
            pending = set(tasks)
            while pending:
                timeout = min(self.config.solver.policy_tick_s, deadline - loop.time())
                if timeout <= 0:
                    break
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    self._collect(task, tasks[task])
                    finished.append(tasks[task])
                decision = self.policy.early_stop.decide(
                    self._state(loop.time() - started, budget_s, records, finished, pending, tasks)
                )
                if decision.stop:
                    stop_reason = decision.reason or "early stop"
                    break
                for task in pending:
                    if tasks[task].attempt_num in decision.cancel:
                        task.cancel()
        finally:
            await self._cancel_all(tasks)
        # Shortest first (then by attempt number): the vote's tie-break then depends on the
        # attempts themselves, never on scheduling jitter, and favours the more direct solution.
        voters = sorted(
            (_as_finished(r) for r in finished if r.finish_reason != "cancelled"),
            key=lambda a: (a.tokens, a.attempt_num),
        )
        answer = self.policy.selection.select(voters)
        seconds = loop.time() - started
        if answer is None:
            return self.fallback(problem_id, records, seconds, budget_s, _no_answer(records))
        top_votes = sum(1 for v in voters if v.answer == answer)
        log.info(
            "%s: answer %d (%d/%d votes, %s, %.1fs of %.1fs)",
            problem_id,
            answer,
            top_votes,
            len(records),
            stop_reason,
            seconds,
            budget_s,
        )
        return ProblemResult(
            problem_id, answer, records, seconds, budget_s, stop_reason, top_votes=top_votes
        )

    def fallback(
        self,
        problem_id: str,
        records: list[AttemptRecord],
        seconds: float,
        budget_s: float,
        reason: str,
    ) -> ProblemResult:
        answer = self.config.solver.fallback_answer
        log.warning("%s: fallback answer %d: %s", problem_id, answer, reason)
        return ProblemResult(
            problem_id, answer, records, seconds, budget_s, reason, used_fallback=True
        )

    @staticmethod
    def _collect(task: asyncio.Task[None], record: AttemptRecord) -> None:
        """Surface an attempt that crashed (a harness bug, not a model failure) in its record."""
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            log.error("attempt %s-%d crashed: %r", record.problem_id, record.attempt_num, exc)
            record.finish_reason = "error"
            record.error_message = f"{type(exc).__name__}: {exc}"

    @staticmethod
    async def _cancel_all(tasks: dict[asyncio.Task[None], AttemptRecord]) -> None:
        """Cancel what still runs and wait until every attempt's record is final."""
        running = [task for task in tasks if not task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for task in running:
            Solver._collect(task, tasks[task])

    def _close_session(self, session: str) -> None:
        close = getattr(self.sandbox, "close_session", None)
        if close is None:
            return
        try:
            close(session)
        except Exception:  # a sandbox that can't close a session must not lose the answer
            log.exception("closing sandbox session %s failed", session)

    @staticmethod
    def _state(
        elapsed: float,
        budget_s: float,
        records: list[AttemptRecord],
        finished: list[AttemptRecord],
        pending: set[asyncio.Task[None]],
        tasks: dict[asyncio.Task[None], AttemptRecord],
    ) -> ProblemState:
        running = tuple(
            RunningAttempt(tasks[t].attempt_num, tasks[t].tokens, elapsed) for t in pending
        )
        return ProblemState(
            elapsed_s=elapsed,
            budget_s=budget_s,
            attempts=len(records),
            finished=tuple(_as_finished(r) for r in finished),
            running=running,
        )


def _as_finished(record: AttemptRecord) -> FinishedAttempt:
    return FinishedAttempt(
        attempt_num=record.attempt_num,
        answer=record.answer,
        tokens=record.tokens,
        time_s=record.time_s,
        code_calls=record.code_calls,
        errors=record.errors,
        entropy=record.entropy,
    )


def _no_answer(records: list[AttemptRecord]) -> str:
    """Why no attempt answered, naming the engine's error when attempts ended in one."""
    errors = [r.error_message for r in records if r.finish_reason == "error" and r.error_message]
    if not errors:
        return "no attempt answered"
    return (
        f"no attempt answered ({len(errors)} of {len(records)} attempts ended in an engine "
        f"error: {errors[0]})"
    )

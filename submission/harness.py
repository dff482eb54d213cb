"""A whole run: the engine's start, the time budget across problems, and what was done.

`AsyncHarness` is the run in asyncio terms (the offline timing tests drive it
in virtual time). `Harness` is the same run behind a blocking facade: one
asyncio loop in a dedicated thread, because the Kaggle gateway calls `predict`
from its own gRPC worker thread and waits for the answer.

The run's clock starts at `started_at` (loop time, i.e. `time.monotonic()` for
the real loop): on Kaggle, the notebook's start, so time spent loading counts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

from submission.config import Config
from submission.engines.base import Chunk, Engine, EngineError, SamplingParams
from submission.engines.registry import create_engine
from submission.families.base import ModelFamily
from submission.families.registry import create_family
from submission.policy import Policy, RunState
from submission.policy.defaults import default_policy
from submission.records import ProblemSummary
from submission.solver import ProblemResult, Solver
from submission.tir import CodeRunner

log = logging.getLogger(__name__)

# Kept back from a per-call limit (AIMO-2: 30 min a call) for cancelling and answering:
# 30 s, or a tenth of a shorter limit.
CALL_LIMIT_MARGIN_S = 30.0


def call_limit_margin(call_limit_s: float) -> float:
    return min(CALL_LIMIT_MARGIN_S, 0.1 * call_limit_s)


class UnbuiltEngine:
    """Stands in for an engine whose constructor raised: its start() raises the reason.

    So a misconfigured engine fails the run the way a failed load does (every
    problem answered with the fallback, the reason logged) instead of crashing
    the kernel before `serve()`: on Kaggle that would be SERVER_NEVER_STARTED.
    """

    greedy = False
    token_prompts = False

    def __init__(self, kind: str, error: Exception) -> None:
        self.name = kind
        self.error = EngineError(f"engine {kind!r} could not be built: {error}")

    async def start(self) -> None:
        raise self.error

    async def stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        raise self.error
        yield  # pragma: no cover - makes this an async generator like the real ones

    async def close(self) -> None:
        return None


class AsyncHarness:
    """Solves problems one after another within one global time budget."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        sandbox: CodeRunner,
        policy: Policy | None = None,
        started_at: float | None = None,
        problems_total: int | None = None,
        on_problem: Callable[[ProblemResult], None] | None = None,
        family: ModelFamily | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.policy = policy or default_policy(config)
        self.solver = Solver(engine, sandbox, config, self.policy, family)
        self.started_at = started_at
        self.problems_total = problems_total or config.profile.problems
        self.on_problem = on_problem
        self.results: list[ProblemResult] = []
        self.history: list[ProblemSummary] = []
        # Problems answered with the fallback outside the solver (predict's own checks).
        self.fallbacks: dict[str, str] = {}
        self._engine_ready: asyncio.Task[None] | None = None

    def start_engine(self) -> asyncio.Task[None]:
        """Begin loading the engine (once); solve() waits for it."""
        if self.started_at is None:
            self.started_at = asyncio.get_running_loop().time()
        if self._engine_ready is None:
            self._engine_ready = asyncio.ensure_future(self._load_engine())
        return self._engine_ready

    async def _load_engine(self) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            await self.engine.start()
            # The model family's vocabulary, and whether this engine can serve it: said at
            # start, so a mismatch is one clear reason, not an error in every attempt.
            await asyncio.to_thread(self.solver.check_ready)
        except Exception as exc:
            seconds = loop.time() - began
            log.error("engine %s FAILED to load after %.1f s: %s", self.engine.name, seconds, exc)
            raise
        log.info("engine %s loaded in %.1f s", self.engine.name, loop.time() - began)

    def run_state(self) -> RunState:
        now = asyncio.get_running_loop().time()
        return RunState(
            elapsed_s=now - (self.started_at if self.started_at is not None else now),
            solve_budget_s=self.config.profile.solve_budget_s,
            problems_total=self.problems_total,
            history=tuple(self.history),
        )

    async def solve(
        self, problem_id: str, problem: str, call_limit_s: float | None = None
    ) -> ProblemResult:
        """Solve one problem within its share of the budget (and the call limit, if any)."""
        loop = asyncio.get_running_loop()
        call_started = loop.time()
        wait_s = self.run_state().time_left_s
        if call_limit_s is not None:
            wait_s = min(wait_s, call_limit_s - call_limit_margin(call_limit_s))
        try:
            # Shielded: a load that outlasts this problem goes on for the next one.
            await asyncio.wait_for(asyncio.shield(self.start_engine()), timeout=max(0.0, wait_s))
        except TimeoutError:
            log.error(
                "%s: engine %s still loading; no time left for this problem",
                problem_id,
                self.engine.name,
            )
            return self._record(self.solver.fallback(problem_id, [], 0.0, 0.0, "engine not ready"))
        except Exception as exc:  # the engine can't run: every problem gets the fallback
            log.error("engine %s failed to start: %s", self.engine.name, exc)
            result = self.solver.fallback(problem_id, [], 0.0, 0.0, f"engine failed: {exc}")
            return self._record(result)
        budget = self.policy.budget.problem_seconds(self.run_state())
        if call_limit_s is not None:
            waited = loop.time() - call_started
            budget = min(budget, call_limit_s - waited - call_limit_margin(call_limit_s))
        result = await self.solver.solve(problem_id, problem, max(0.0, budget))
        return self._record(result)

    def grade(self, expected: dict[str, int | None]) -> None:
        """Mark problems and attempts correct or not, where the answer is known."""
        for result in self.results:
            answer = expected.get(result.problem_id)
            if answer is None:
                continue
            for attempt in result.attempts:
                attempt.is_correct = attempt.answer == answer
        self.history = [
            replace(s, is_correct=s.answer == expected[s.problem_id])
            if expected.get(s.problem_id) is not None
            else s
            for s in self.history
        ]

    def note_fallback(self, problem_id: str, reason: str) -> None:
        """A problem answered with the fallback before or around the solver (for the report)."""
        self.fallbacks.setdefault(problem_id, reason)

    def _record(self, result: ProblemResult) -> ProblemResult:
        self.results.append(result)
        self.history.append(
            ProblemSummary(
                problem_id=result.problem_id,
                answer=result.answer,
                seconds=result.seconds,
                budget_s=result.budget_s,
                attempts=len(result.attempts),
                answered=sum(1 for a in result.attempts if a.answer is not None),
                top_votes=result.top_votes,
                tokens=sum(a.tokens for a in result.attempts),
                stop_reason=result.stop_reason,
            )
        )
        if result.used_fallback:
            log.warning("fallback %s: %s", result.problem_id, result.stop_reason)
        if self.config.output.progress:
            self._log_progress(result)
        if self.on_problem is not None:
            self.on_problem(result)
        return result

    def _log_progress(self, result: ProblemResult) -> None:
        """One line per problem: k/N, answer with its votes, time, and the run's clock."""
        state = self.run_state()
        answered = sum(1 for a in result.attempts if a.answer is not None)
        log.info(
            "problem %d/%d %s: answer %d (%d/%d votes, %d answered) in %.1f s (%s) | "
            "elapsed %.0f s, left %.0f s",
            len(self.history),
            self.problems_total,
            result.problem_id,
            result.answer,
            result.top_votes,
            len(result.attempts),
            answered,
            result.seconds,
            result.stop_reason,
            state.elapsed_s,
            state.time_left_s,
        )


class Harness:
    """The run behind a blocking API, its asyncio loop in a thread of its own."""

    def __init__(self, core: AsyncHarness, loop: asyncio.AbstractEventLoop) -> None:
        self.core = core
        self.loop = loop
        self._engine_future = asyncio.run_coroutine_threadsafe(self._start_engine(), loop)

    @classmethod
    def start(
        cls,
        config: Config,
        engine: Engine | None = None,
        sandbox: CodeRunner | None = None,
        policy: Policy | None = None,
        started_at: float | None = None,
        problems_total: int | None = None,
        on_problem: Callable[[ProblemResult], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Harness:
        """Start the sandbox (before anything touches CUDA), the loop, and the engine's loading.

        `loop` (default: a new event loop) is run in the harness's thread; the offline
        timing tests pass a virtual-time one.
        """
        family = create_family(config)
        if sandbox is None:
            from submission.sandbox import Sandbox

            sandbox = Sandbox.from_config(config, family.session_prelude)
        if engine is None:
            try:
                engine = create_engine(config)
            except Exception as exc:  # fail at the first problem, not before serve()
                log.error("engine %r could not be built: %s", config.engine.kind, exc)
                engine = UnbuiltEngine(config.engine.kind, exc)
        loop = loop or asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="harness-loop", daemon=True).start()
        core = AsyncHarness(
            config, engine, sandbox, policy, started_at, problems_total, on_problem, family
        )
        return cls(core, loop)

    async def _start_engine(self) -> None:
        await self.core.start_engine()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """True once the engine has loaded, False while it is still loading after `timeout_s`.

        Raises the loading exception when loading failed, so the caller can say why.
        """
        try:
            self._engine_future.result(timeout=timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def load_error(self) -> BaseException | None:
        """Why the engine failed to load (None while loading or once loaded)."""
        if not self._engine_future.done() or self._engine_future.cancelled():
            return None
        return self._engine_future.exception()

    def note_fallback(self, problem_id: str, reason: str) -> None:
        self.core.note_fallback(problem_id, reason)

    def solve(self, problem_id: str, problem: str, timeout_s: float | None = None) -> int:
        """The answer to one problem; the fallback answer if anything goes wrong (never raises)."""
        future = asyncio.run_coroutine_threadsafe(
            self.core.solve(problem_id, problem, call_limit_s=timeout_s), self.loop
        )
        try:
            return future.result(timeout=timeout_s).answer
        except Exception:
            log.exception("%s: solving failed; answering the fallback", problem_id)
            future.cancel()
            return self.core.config.solver.fallback_answer

    @property
    def results(self) -> list[ProblemResult]:
        return self.core.results

    def write_outputs(
        self, out_dir: str | Path, extra_lines: Sequence[str] = ()
    ) -> dict[str, Path]:
        from submission.report import write_run_outputs

        return write_run_outputs(
            self.core.results,
            self.core.history,
            Path(out_dir),
            write_report=self.core.config.output.write_report,
            extra_lines=extra_lines,
            fallbacks=self.core.fallbacks,
        )

    def close(self) -> None:
        async def shutdown() -> None:
            await self.core.engine.close()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=60)
        except Exception:
            log.exception("closing the engine failed")
        close_sandbox = getattr(self.core.solver.sandbox, "close", None)
        if close_sandbox is not None:
            close_sandbox()
        self.loop.call_soon_threadsafe(self.loop.stop)

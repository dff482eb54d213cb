"""The two ways TensorRT-LLM serves an engine folder in this process: the LLM API and the executor.

`LlmApiBackend` streams through `LLM.generate_async(..., streaming=True)` and
aborts with `.abort()`; `RunnerBackend` enqueues executor requests through
`ModelRunnerCpp`, one thread polling `await_responses`, and cancels with
`cancel_request`. Both send what `engine_sampling` says the engine applies,
cut the text at the first stop string (a drafter can stream tokens past it in
the same step, with an empty `stop_reason`), count only the tokens up to the
stop, and put the effective sampling in the first chunk's `meta["sampling"]`.
Stop token ids (`SamplingParams.stop_token_ids`) go to the engine with the
single-token stop strings; the engine keeps a stop token in its output (ids and
text), so its text is cut like a stop string's and reported as `stop_token`.
Every chunk carries the ids of the tokens it counts.
Sources of every TensorRT-LLM fact: docs/engines.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib
import importlib.util
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from submission.engines.base import Chunk, EngineError, FinishReason, SamplingParams
from submission.engines.streamtext import IncrementalDecoder, StopMatcher
from submission.engines.trtllm_folder import EngineFacts
from submission.engines.trtllm_sampling import EngineSampling, engine_sampling

log = logging.getLogger(__name__)

# TensorRT-LLM's finish reasons -> ours ("timeout" is a request timeout we never set).
FINISH_REASONS: dict[str | None, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "cancelled": "cancelled",
    "timeout": "error",
    None: "stop",
}
# How long the ModelRunnerCpp poller waits for responses before checking for shutdown.
RUNNER_POLL = datetime.timedelta(milliseconds=20)
# The LLM API's executor runs in this process when this is "1" (read once, cached, when
# the first executor is created); otherwise one GPU still gets an MPI worker process.
SINGLE_PROCESS_ENV = "TLLM_WORKER_USE_SINGLE_PROCESS"


@dataclass(frozen=True)
class RuntimeSettings:
    """What both backends load an engine with, built once from engine.trtllm and the folder."""

    max_batch_size: int  # the configured one, capped at the engine's build value
    kv_cache_free_gpu_memory_fraction: float
    enable_block_reuse: bool
    single_process: bool
    # The engine's GPUs (its --tp_size): above 1 the LLM API runs one MPI rank per GPU.
    tensor_parallel_size: int = 1


@dataclass
class DecodeCounters:
    """Tokens and engine steps streamed so far (a drafter accepts several tokens per step)."""

    tokens: int = 0
    steps: int = 0

    def add(self, tokens: int) -> None:
        if tokens > 0:
            self.tokens += tokens
            self.steps += 1


def tokens_up_to_stop(tokenizer: Any, new_ids: list[int], past_stop: str) -> int:
    """How many of `new_ids` made the text up to and including the stop string.

    The rest are tokens the engine generated past the stop in the same step.
    """
    if not past_stop:
        return len(new_ids)
    past = 0
    for start in range(len(new_ids) - 1, -1, -1):
        text = tokenizer.decode(new_ids[start:], skip_special_tokens=False)
        if len(text) > len(past_stop):
            break
        past += 1
    return len(new_ids) - past


class TrtllmEngine(Protocol):
    """What a backend reads from the engine that owns it (engines/trtllm.py's TrtllmEngine)."""

    engine_dir: Path
    tokenizer_dir: Path
    facts: EngineFacts | None
    tokenizer: Any
    counters: DecodeCounters

    def runtime_settings(self) -> RuntimeSettings: ...

    def split_stops(self, stops: tuple[str, ...]) -> tuple[list[int], list[str]]: ...

    def stop_text(self, reason: int | str | None) -> str | None: ...

    def stop_token_texts(self, token_ids: tuple[int, ...]) -> dict[str, int]: ...


@dataclass(frozen=True)
class RequestStops:
    """One request's stops: the strings asked for, and the stop token ids with their text."""

    strings: tuple[str, ...]
    token_texts: dict[str, int]  # the text a stop token id shows in the output -> the id

    @classmethod
    def of(cls, engine: TrtllmEngine, params: SamplingParams) -> RequestStops:
        return cls(params.stop, engine.stop_token_texts(params.stop_token_ids))

    def matcher(self) -> StopMatcher:
        extra = tuple(text for text in self.token_texts if text not in self.strings)
        return StopMatcher((*self.strings, *extra))

    def token_text(self, reason: int | str | None) -> str | None:
        """The text of the stop token id an engine's `stop_reason` names, if it is one."""
        return next((text for text, token in self.token_texts.items() if token == reason), None)

    def fields(self, matched: str | None) -> dict[str, Any]:
        """The chunk fields for what ended the stream: a stop string, or a stop token."""
        if matched is not None and matched not in self.strings and matched in self.token_texts:
            return {"stop": None, "stop_token": self.token_texts[matched]}
        return {"stop": matched}


class SamplingNotes:
    """Turns SamplingParams into the engine's fields, warning once about what it ignores."""

    def __init__(self, engine: TrtllmEngine) -> None:
        self.engine = engine
        self._warned: set[tuple[str, ...]] = set()

    def __call__(self, params: SamplingParams) -> EngineSampling:
        facts = self.engine.facts
        has_drafter = facts is not None and facts.has_drafter
        greedy_drafter = facts is not None and facts.greedy_drafter
        sampling = engine_sampling(params, has_drafter, greedy_drafter)
        if sampling.ignored and sampling.ignored not in self._warned:
            self._warned.add(sampling.ignored)
            log.warning(
                "trtllm: this engine's drafter (explicit draft tokens) applies only stop "
                "criteria, EOS, seed and temperature; ignoring %s. Effective: %s",
                " ".join(sampling.ignored),
                sampling.describe(),
            )
        return sampling


def use_single_process(enabled: bool) -> None:
    """Keep the LLM API's executor in this process, or check that its MPI workers can start."""
    if enabled:
        os.environ[SINGLE_PROCESS_ENV] = "1"
        return
    if importlib.util.find_spec("mpi4py") is None:
        raise EngineError(
            "trtllm: the engine runs in MPI worker processes (a tensor-parallel engine, or "
            "engine.trtllm.single_process = false), which need mpi4py (and an MPI library); "
            "neither is installed"
        )


class LlmApiBackend:
    """Streams through `LLM.generate_async(..., streaming=True)`; aborts with `.abort()`."""

    def __init__(self, tensorrt_llm: Any, llm_class: Any, engine: TrtllmEngine) -> None:
        self.engine = engine
        settings = engine.runtime_settings()
        llmapi = importlib.import_module("tensorrt_llm.llmapi")
        self.sampling_params_class = tensorrt_llm.SamplingParams
        self.notes = SamplingNotes(engine)
        kv_cache = llmapi.KvCacheConfig(
            free_gpu_memory_fraction=settings.kv_cache_free_gpu_memory_fraction,
            enable_block_reuse=settings.enable_block_reuse,
        )
        # A tp > 1 engine always runs in MPI workers, one per GPU (llmapi/utils.py keeps only
        # a tp 1 executor in this process): mpi4py must be there.
        use_single_process(settings.single_process and settings.tensor_parallel_size == 1)
        self.llm = llm_class(
            model=str(engine.engine_dir),
            tokenizer=str(engine.tokenizer_dir),
            tensor_parallel_size=settings.tensor_parallel_size,
            kv_cache_config=kv_cache,
            max_batch_size=settings.max_batch_size,
        )

    def sampling_params(self, params: SamplingParams, max_tokens: int) -> tuple[Any, str]:
        stop_ids, stop_strings = self.engine.split_stops(params.stop)
        stop_ids += [t for t in params.stop_token_ids if t not in stop_ids]
        sampling = self.notes(params)
        sent = self.sampling_params_class(
            max_tokens=max_tokens,  # TensorRT-LLM's default is 32
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            seed=sampling.seed,
            stop_token_ids=stop_ids or None,
            stop=stop_strings or None,
            include_stop_str_in_output=True,
            skip_special_tokens=False,
        )
        return sent, sampling.describe()

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, max_tokens: int
    ) -> AsyncIterator[Chunk]:
        stops = RequestStops.of(self.engine, params)
        matcher = stops.matcher()
        counters = self.engine.counters
        tokenizer = self.engine.tokenizer
        result = None
        try:
            sent, described = self.sampling_params(params, max_tokens)
            meta: dict[str, Any] = {"sampling": described}
            result = self.llm.generate_async(prompt_ids, sampling_params=sent, streaming=True)
            seen_tokens = 0
            async for output in result:
                completion = output.outputs[0]
                new_ids = list(completion.token_ids[seen_tokens:])
                seen_tokens = len(completion.token_ids)
                text, stop = matcher.feed(completion.text_diff)
                if stop is not None:
                    kept = tokens_up_to_stop(tokenizer, new_ids, matcher.past_stop)
                    counters.add(kept)
                    ids = tuple(new_ids[:kept])
                    yield Chunk(text, kept, "stop", token_ids=ids, meta=meta, **stops.fields(stop))
                    return
                counters.add(len(new_ids))
                if output.finished:
                    reason = FINISH_REASONS.get(completion.finish_reason, "error")
                    why = completion.stop_reason
                    stop = self.engine.stop_text(why) or stops.token_text(why)
                    tail = "" if stop is not None else matcher.flush()
                    error = f"trtllm: {completion.finish_reason}" if reason == "error" else None
                    yield Chunk(
                        text + tail,
                        len(new_ids),
                        reason,
                        error=error,
                        token_ids=tuple(new_ids),
                        meta=meta,
                        **stops.fields(stop),
                    )
                    return
                if text or new_ids:
                    yield Chunk(text, len(new_ids), token_ids=tuple(new_ids), meta=meta)
                    meta = {}
            yield Chunk(matcher.flush(), 0, "error", error="trtllm: stream ended unfinished")
        except Exception as exc:  # the engine's errors end this stream, never the harness
            log.warning("trtllm: request failed: %s", exc)
            yield Chunk("", 0, "error", error=f"trtllm: {type(exc).__name__}: {exc}")
        finally:
            if result is not None and not result.finished:
                with contextlib.suppress(Exception):
                    result.abort()

    def reused_kv_blocks(self) -> int | None:
        """KV-cache blocks reused so far (iteration stats' kvCacheStats.reusedBlocks), or None."""
        try:
            stats = self.llm.get_stats(timeout=2)
        except Exception as exc:
            log.info("trtllm: no iteration stats: %s", exc)
            return None
        reused = [
            (json.loads(s) if isinstance(s, str) else s).get("kvCacheStats", {}).get("reusedBlocks")
            for s in stats
        ]
        counts = [r for r in reused if isinstance(r, int)]
        return max(counts) if counts else None

    def shutdown(self) -> None:
        self.llm.shutdown()


class RunnerBackend:
    """Streams through ModelRunnerCpp's executor: enqueue, poll responses, cancel.

    One thread polls `await_responses` for every request and hands each response
    to its stream's asyncio queue. The executor runs in this process.
    """

    def __init__(self, engine: TrtllmEngine) -> None:
        self.engine = engine
        settings = engine.runtime_settings()
        runtime = importlib.import_module("tensorrt_llm.runtime")
        self.bindings = importlib.import_module("tensorrt_llm.bindings.executor")
        self.notes = SamplingNotes(engine)
        self.runner = runtime.ModelRunnerCpp.from_dir(
            str(engine.engine_dir),
            max_batch_size=settings.max_batch_size,
            kv_cache_free_gpu_memory_fraction=settings.kv_cache_free_gpu_memory_fraction,
            kv_cache_enable_block_reuse=settings.enable_block_reuse,  # off by default there
        )
        # Newer versions call it `executor`, older ones `session`.
        self.executor = getattr(self.runner, "executor", None) or self.runner.session
        self._routes: dict[int, Callable[[Any], None]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="trtllm-poller", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            try:
                responses = self.executor.await_responses(timeout=RUNNER_POLL)
            except Exception as exc:
                log.error("trtllm: await_responses failed: %s", exc)
                responses = []
                with self._lock:
                    routes = list(self._routes.values())
                for deliver in routes:
                    with contextlib.suppress(RuntimeError):
                        deliver(exc)
                self._stopping.wait(0.5)
            for response in responses:
                with self._lock:
                    deliver = self._routes.get(response.request_id)
                if deliver is not None:
                    with contextlib.suppress(RuntimeError):  # its event loop already closed
                        deliver(response)

    def request(self, prompt_ids: list[int], params: SamplingParams, max_tokens: int) -> Any:
        b = self.bindings
        tokenizer = self.engine.tokenizer
        stop_ids, stop_strings = self.engine.split_stops(params.stop)
        stop_ids += [t for t in params.stop_token_ids if t not in stop_ids]
        stop_words = [[token] for token in stop_ids] + [
            tokenizer.encode(s, add_special_tokens=False) for s in stop_strings
        ]
        sampling = self.notes(params)
        config = b.SamplingConfig(
            beam_width=1,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            temperature=sampling.temperature,
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            seed=sampling.seed,
        )
        end_id = tokenizer.eos_token_id
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
        return b.Request(
            input_token_ids=prompt_ids,
            max_tokens=max_tokens,
            streaming=True,
            sampling_config=config,
            output_config=b.OutputConfig(exclude_input_from_output=True),
            end_id=end_id,
            pad_id=pad_id,
            stop_words=stop_words or None,
        ), sampling.describe()

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, max_tokens: int
    ) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stops = RequestStops.of(self.engine, params)
        matcher = stops.matcher()
        tokenizer = self.engine.tokenizer
        decoder = IncrementalDecoder(tokenizer)
        counters = self.engine.counters
        finished = self.bindings.FinishReason
        request_id: int | None = None
        done = False
        try:
            request, described = self.request(prompt_ids, params, max_tokens)
            meta: dict[str, Any] = {"sampling": described}
            with self._lock:
                request_id = self.executor.enqueue_request(request)
                self._routes[request_id] = lambda r: loop.call_soon_threadsafe(queue.put_nowait, r)
            while True:
                response = await queue.get()
                if isinstance(response, BaseException):
                    raise response
                if response.has_error():
                    done = True
                    yield Chunk("", 0, "error", error=f"trtllm: {response.error_msg}")
                    return
                result = response.result
                new_ids = list(result.output_token_ids[0])
                text, stop = matcher.feed(decoder.add(new_ids))
                if stop is not None:
                    done = result.is_final
                    kept = tokens_up_to_stop(tokenizer, new_ids, matcher.past_stop)
                    counters.add(kept)
                    ids = tuple(new_ids[:kept])
                    yield Chunk(text, kept, "stop", token_ids=ids, meta=meta, **stops.fields(stop))
                    return
                counters.add(len(new_ids))
                if result.is_final:
                    done = True
                    why = result.finish_reasons[0]
                    reason: FinishReason = (
                        "length"
                        if why == finished.LENGTH
                        else "cancelled"
                        if why == finished.CANCELLED
                        else "error"
                        if why == finished.TIMED_OUT
                        else "stop"
                    )
                    tail, stop_text = matcher.feed(decoder.flush())
                    tail += "" if stop_text else matcher.flush()
                    yield Chunk(
                        text + tail,
                        len(new_ids),
                        reason,
                        token_ids=tuple(new_ids),
                        meta=meta,
                        **stops.fields(stop_text),
                    )
                    return
                if text or new_ids:
                    yield Chunk(text, len(new_ids), token_ids=tuple(new_ids), meta=meta)
                    meta = {}
        except Exception as exc:
            log.warning("trtllm: request failed: %s", exc)
            yield Chunk("", 0, "error", error=f"trtllm: {type(exc).__name__}: {exc}")
        finally:
            if request_id is not None:
                with self._lock:
                    self._routes.pop(request_id, None)
                if not done:
                    with contextlib.suppress(Exception):
                        self.executor.cancel_request(request_id)

    def reused_kv_blocks(self) -> int | None:
        """KV-cache blocks reused so far (the latest iteration stats), or None."""
        try:
            stats = self.executor.get_latest_iteration_stats()
        except Exception as exc:
            log.info("trtllm: no iteration stats: %s", exc)
            return None
        counts = [
            s.kv_cache_stats.reused_blocks
            for s in stats
            if getattr(s, "kv_cache_stats", None) is not None
        ]
        return max(counts) if counts else None

    def shutdown(self) -> None:
        self._stopping.set()
        self._poller.join(timeout=5)
        with contextlib.suppress(Exception):
            self.executor.shutdown()

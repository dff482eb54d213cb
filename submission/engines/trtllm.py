"""In-process TensorRT-LLM: a prebuilt engine folder served without a server (production).

`start()` first inspects the engine folder without importing TensorRT-LLM and
refuses what cannot work (missing config or tokenizer, another TensorRT-LLM
version, a max sequence length below the token budget), then imports
`tensorrt_llm` (after the sandbox has started: fork after CUDA is unsafe) and
loads the engine through the LLM API (1.x: `tensorrt_llm._tensorrt_engine.LLM`;
0.19-0.21: `tensorrt_llm.LLM`), or through `ModelRunnerCpp`'s executor where
that API is missing or, before 0.19, cannot abort a request. Facts used here
are from TensorRT-LLM's public source (tensorrt_llm/llmapi/llm.py,
sampling_params.py, executor/result.py, runtime/model_runner_cpp.py, the release
notes; see tests/fakes/tensorrt_llm.py for versions).

Stop strings: single-token ones (`</tool_call>`, `<|im_end|>` in Qwen2.5) go
to the engine as stop token ids, the rest as stop strings; the engine keeps the
stop text in its output (`include_stop_str_in_output`) and `StopMatcher` cuts
it, so a stop string is never half-streamed before the engine trims it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib
import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submission.config import Config, TrtllmEngineConfig
from submission.engines.base import Chunk, EngineError, FinishReason, SamplingParams
from submission.engines.streamtext import IncrementalDecoder, StopMatcher
from submission.manifest import ManifestError, read_manifest, verify_files

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
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
# The LLM API's results gained `abort()` in 0.19.0 (release notes: "Added abort request
# support"); before it a closed stream keeps generating, so "auto" takes ModelRunnerCpp.
LLM_API_ABORT_SINCE = (0, 19)


@dataclass(frozen=True)
class EngineFacts:
    """What an engine folder says about itself (from manifest.json, else config.json)."""

    built_version: str
    max_seq_len: int
    max_input_len: int
    max_batch_size: int
    greedy_drafter: bool
    source: str  # the file the facts came from


def inspect_engine_dir(engine_dir: Path, tokenizer_dir: Path, verify_hashes: bool) -> EngineFacts:
    """Read an engine folder's facts, refusing (EngineError) a folder that cannot load."""
    config_path = engine_dir / "config.json"
    if not engine_dir.is_dir():
        raise EngineError(f"trtllm: engine folder {engine_dir} does not exist")
    if not config_path.is_file():
        raise EngineError(f"trtllm: {config_path} is missing: not a trtllm-build engine folder")
    if not any((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
        raise EngineError(
            f"trtllm: no tokenizer in {tokenizer_dir} (expected one of {TOKENIZER_FILES}); "
            "set engine.trtllm.tokenizer_dir"
        )
    try:
        engine_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(f"trtllm: cannot read {config_path}: {exc}") from None
    try:
        manifest = read_manifest(engine_dir)
    except ManifestError as exc:
        log.warning("trtllm: %s; using config.json alone", exc)
        return _facts_from_config(engine_config, str(config_path))
    problems = verify_files(engine_dir, manifest, check_hashes=verify_hashes)
    if problems:
        raise EngineError(f"trtllm: engine folder does not match its manifest: {problems[:5]}")
    return EngineFacts(
        built_version=manifest.tensorrt_llm_version,
        max_seq_len=manifest.max_seq_len,
        max_input_len=manifest.max_input_len,
        max_batch_size=manifest.max_batch_size,
        greedy_drafter=manifest.greedy_drafter,
        source=str(engine_dir / "manifest.json"),
    )


def _facts_from_config(engine_config: dict[str, Any], source: str) -> EngineFacts:
    build = engine_config.get("build_config") or {}
    pretrained = engine_config.get("pretrained_config") or {}
    version = engine_config.get("version")
    max_seq_len = build.get("max_seq_len")
    if not isinstance(version, str) or not isinstance(max_seq_len, int):
        raise EngineError(f"trtllm: {source} lacks 'version' or 'build_config.max_seq_len'")
    is_redrafter = str(pretrained.get("architecture", "")).startswith("ReDrafter") or (
        "redrafter_num_beams" in pretrained
    )
    # The ReDrafter convert script's default is greedy (--redrafter_no_greedy_search turns it off).
    greedy = is_redrafter and bool(pretrained.get("redrafter_greedy_search", True))
    return EngineFacts(
        built_version=version,
        max_seq_len=max_seq_len,
        max_input_len=int(build.get("max_input_len", max_seq_len)),
        max_batch_size=int(build.get("max_batch_size", 0)),
        greedy_drafter=greedy,
        source=source,
    )


def check_fit(facts: EngineFacts, installed_version: str, max_tokens: int, allowance: int) -> None:
    """Refuse an engine built by another TensorRT-LLM, or too short for the token budget."""
    if facts.built_version != installed_version:
        raise EngineError(
            f"trtllm: engine built by TensorRT-LLM {facts.built_version} ({facts.source}) but "
            f"{installed_version} is installed: rebuild it, or install the matching wheel"
        )
    if facts.max_seq_len < max_tokens + allowance:
        raise EngineError(
            f"trtllm: engine max_seq_len {facts.max_seq_len} < generation.max_tokens {max_tokens}"
            f" + engine.trtllm.prompt_allowance_tokens {allowance}: rebuild with a longer "
            "--max_seq_len or lower generation.max_tokens"
        )


class TrtllmEngine:
    """An engine folder loaded in this process; many attempts stream from it at once."""

    name = "trtllm"

    def __init__(self, config: TrtllmEngineConfig, max_tokens: int) -> None:
        if not config.engine_dir:
            raise EngineError("trtllm: set engine.trtllm.engine_dir")
        self.config = config
        self.max_tokens = max_tokens
        self.engine_dir = Path(config.engine_dir)
        self.tokenizer_dir = Path(config.tokenizer_dir or config.engine_dir)
        self.greedy = False
        self.facts: EngineFacts | None = None
        self._backend: _LlmApiBackend | _RunnerBackend | None = None
        self._tokenizer: Any = None
        self._stop_ids: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: Config) -> TrtllmEngine:
        return cls(config.engine.trtllm, config.generation.max_tokens)

    async def start(self) -> None:
        if self._backend is not None:
            return
        facts = inspect_engine_dir(self.engine_dir, self.tokenizer_dir, self.config.verify_hashes)
        try:
            tensorrt_llm = importlib.import_module("tensorrt_llm")
        except ImportError as exc:
            raise EngineError(f"trtllm: tensorrt_llm is not importable: {exc}") from None
        check_fit(
            facts,
            str(tensorrt_llm.__version__),
            self.max_tokens,
            self.config.prompt_allowance_tokens,
        )
        if facts.greedy_drafter:
            log.warning(
                "trtllm: GREEDY DRAFTER (%s): this ReDrafter engine ignores temperature, so "
                "parallel attempts come out identical. %s Rebuild with "
                "--redrafter_no_greedy_search to sample.",
                facts.source,
                "Running them anyway (engine.trtllm.allow_greedy_drafter)."
                if self.config.allow_greedy_drafter
                else "Running ONE attempt per problem.",
            )
            self.greedy = not self.config.allow_greedy_drafter
        self.facts = facts
        self._tokenizer = await asyncio.to_thread(_load_tokenizer, self.tokenizer_dir)
        self._backend = await asyncio.to_thread(self._load_backend, tensorrt_llm)

    def _load_backend(self, tensorrt_llm: Any) -> _LlmApiBackend | _RunnerBackend:
        api = self.config.api
        version = str(tensorrt_llm.__version__)
        can_abort = _release(version) >= LLM_API_ABORT_SINCE
        wants_llm = api == "llm" or (api == "auto" and can_abort)
        llm_class = _llm_class(tensorrt_llm) if wants_llm else None
        if llm_class is not None and not can_abort:
            log.warning(
                "trtllm: TensorRT-LLM %s's LLM API cannot abort a request (0.19 can): a "
                "cancelled attempt runs on to max_tokens; engine.trtllm.api = 'auto' would "
                "use ModelRunnerCpp",
                version,
            )
        if llm_class is not None:
            log.info("trtllm: loading %s through %s", self.engine_dir, llm_class.__module__)
            return _LlmApiBackend(tensorrt_llm, llm_class, self)
        if api == "llm":
            raise EngineError("trtllm: engine.trtllm.api = 'llm' but no LLM API is importable")
        log.info("trtllm: loading %s through ModelRunnerCpp", self.engine_dir)
        return _RunnerBackend(self)

    def max_batch_size(self) -> int:
        """The configured batch size, at most what the engine was built for."""
        built = self.facts.max_batch_size if self.facts is not None else 0
        wanted = self.config.max_batch_size
        if 0 < built < wanted:
            log.warning(
                "trtllm: engine built for max_batch_size %d; using %d, not %d", built, built, wanted
            )
            return built
        return wanted

    def stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        return self._stream(prompt, params)

    async def _stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        if self._backend is None or self.facts is None:
            yield Chunk("", 0, "error", error="trtllm: start() was not called")
            return
        try:
            prompt_ids = self._tokenizer.encode(prompt, add_special_tokens=False)
        except Exception as exc:
            yield Chunk("", 0, "error", error=f"trtllm: cannot tokenize the prompt: {exc}")
            return
        # The engine rejects an input over max_input_len, and prompt + max_tokens over
        # max_seq_len: a late TIR round that no longer fits ends as "length", not as an error.
        room = self.facts.max_seq_len - len(prompt_ids)
        if room <= 0 or len(prompt_ids) > self.facts.max_input_len:
            yield Chunk("", 0, "length")
            return
        max_tokens = min(params.max_tokens, room)
        # Close the backend's stream explicitly: that is what aborts the request.
        async with contextlib.aclosing(self._backend.stream(prompt_ids, params, max_tokens)) as it:
            async for chunk in it:
                yield chunk

    def split_stops(self, stops: tuple[str, ...]) -> tuple[list[int], list[str]]:
        """Stop strings that are one token (sent as ids) and the rest (sent as strings)."""
        ids: list[int] = []
        strings: list[str] = []
        for stop in stops:
            if stop not in self._stop_ids:
                encoded = self._tokenizer.encode(stop, add_special_tokens=False)
                self._stop_ids[stop] = encoded[0] if len(encoded) == 1 else -1
            token = self._stop_ids[stop]
            if token >= 0:
                ids.append(token)
            else:
                strings.append(stop)
        return ids, strings

    def stop_text(self, reason: int | str | None) -> str | None:
        """The stop string a TensorRT-LLM stop_reason (token id or string) stands for."""
        if isinstance(reason, str):
            return reason
        for text, token in self._stop_ids.items():
            if token == reason:
                return text
        return None

    async def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            await asyncio.to_thread(backend.shutdown)


def _load_tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as exc:
        raise EngineError(f"trtllm: cannot load the tokenizer in {tokenizer_dir}: {exc}") from None


def _release(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT-LLM version string such as 0.17.0.post1 or 1.0.0rc4."""
    parts = [*version.split("."), "0"][:2]
    major, minor = (int("".join(itertools.takewhile(str.isdigit, p)) or 0) for p in parts)
    return major, minor


def _llm_class(tensorrt_llm: Any) -> Any:
    """The TensorRT-engine LLM class of the installed version, or None where it is missing."""
    major = _release(str(tensorrt_llm.__version__))[0]
    try:
        if major >= 1:
            # In 1.x plain tensorrt_llm.LLM is the PyTorch backend; TRT engines load here.
            return importlib.import_module("tensorrt_llm._tensorrt_engine").LLM
        return tensorrt_llm.LLM
    except (ImportError, AttributeError):
        return None


class _LlmApiBackend:
    """Streams through `LLM.generate_async(..., streaming=True)`; aborts with `.abort()`."""

    def __init__(self, tensorrt_llm: Any, llm_class: Any, engine: TrtllmEngine) -> None:
        self.engine = engine
        config = engine.config
        llmapi = importlib.import_module("tensorrt_llm.llmapi")
        self.sampling_params_class = tensorrt_llm.SamplingParams
        kv_cache = llmapi.KvCacheConfig(
            free_gpu_memory_fraction=config.kv_cache_free_gpu_memory_fraction,
            enable_block_reuse=config.enable_block_reuse,
        )
        self.llm = llm_class(
            model=str(engine.engine_dir),
            tokenizer=str(engine.tokenizer_dir),
            kv_cache_config=kv_cache,
            max_batch_size=engine.max_batch_size(),
        )

    def sampling_params(self, params: SamplingParams, max_tokens: int) -> Any:
        stop_ids, stop_strings = self.engine.split_stops(params.stop)
        greedy = params.temperature <= 0.0
        return self.sampling_params_class(
            max_tokens=max_tokens,  # TensorRT-LLM's default is 32
            temperature=None if greedy else params.temperature,
            top_k=1 if greedy else (params.top_k or None),
            top_p=None if greedy else params.top_p,
            min_p=params.min_p or None,
            repetition_penalty=params.repetition_penalty,
            seed=params.seed,
            stop_token_ids=stop_ids or None,
            stop=stop_strings or None,
            include_stop_str_in_output=True,
            skip_special_tokens=False,
        )

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, max_tokens: int
    ) -> AsyncIterator[Chunk]:
        matcher = StopMatcher(params.stop)
        result = None
        try:
            result = self.llm.generate_async(
                prompt_ids, sampling_params=self.sampling_params(params, max_tokens), streaming=True
            )
            seen_tokens = 0
            async for output in result:
                completion = output.outputs[0]
                new_tokens = len(completion.token_ids) - seen_tokens
                seen_tokens = len(completion.token_ids)
                text, stop = matcher.feed(completion.text_diff)
                if stop is not None:
                    yield Chunk(text, new_tokens, "stop", stop=stop)
                    return
                if output.finished:
                    reason = FINISH_REASONS.get(completion.finish_reason, "error")
                    stop = self.engine.stop_text(completion.stop_reason)
                    tail = "" if stop is not None else matcher.flush()
                    error = f"trtllm: {completion.finish_reason}" if reason == "error" else None
                    yield Chunk(text + tail, new_tokens, reason, stop=stop, error=error)
                    return
                if text or new_tokens:
                    yield Chunk(text, new_tokens)
            yield Chunk(matcher.flush(), 0, "error", error="trtllm: stream ended unfinished")
        except Exception as exc:  # the engine's errors end this stream, never the harness
            log.warning("trtllm: request failed: %s", exc)
            yield Chunk("", 0, "error", error=f"trtllm: {type(exc).__name__}: {exc}")
        finally:
            if result is not None and not result.finished:
                with contextlib.suppress(Exception):
                    result.abort()

    def shutdown(self) -> None:
        self.llm.shutdown()


class _RunnerBackend:
    """Streams through ModelRunnerCpp's executor: enqueue, poll responses, cancel.

    One thread polls `await_responses` for every request and hands each response
    to its stream's asyncio queue.
    """

    def __init__(self, engine: TrtllmEngine) -> None:
        self.engine = engine
        config = engine.config
        runtime = importlib.import_module("tensorrt_llm.runtime")
        self.bindings = importlib.import_module("tensorrt_llm.bindings.executor")
        self.runner = runtime.ModelRunnerCpp.from_dir(
            str(engine.engine_dir),
            max_batch_size=engine.max_batch_size(),
            kv_cache_free_gpu_memory_fraction=config.kv_cache_free_gpu_memory_fraction,
            kv_cache_enable_block_reuse=config.enable_block_reuse,  # off by default there
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
        tokenizer = self.engine._tokenizer
        stop_ids, stop_strings = self.engine.split_stops(params.stop)
        stop_words = [[token] for token in stop_ids] + [
            tokenizer.encode(s, add_special_tokens=False) for s in stop_strings
        ]
        greedy = params.temperature <= 0.0
        sampling = b.SamplingConfig(
            beam_width=1,
            top_k=1 if greedy else (params.top_k or None),
            top_p=None if greedy else params.top_p,
            temperature=None if greedy else params.temperature,
            min_p=params.min_p or None,
            repetition_penalty=params.repetition_penalty,
            seed=params.seed,
        )
        end_id = tokenizer.eos_token_id
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
        return b.Request(
            input_token_ids=prompt_ids,
            max_tokens=max_tokens,
            streaming=True,
            sampling_config=sampling,
            output_config=b.OutputConfig(exclude_input_from_output=True),
            end_id=end_id,
            pad_id=pad_id,
            stop_words=stop_words or None,
        )

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, max_tokens: int
    ) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        matcher = StopMatcher(params.stop)
        decoder = IncrementalDecoder(self.engine._tokenizer)
        finished = self.bindings.FinishReason
        request_id: int | None = None
        done = False
        try:
            request = self.request(prompt_ids, params, max_tokens)
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
                    yield Chunk(text, len(new_ids), "stop", stop=stop)
                    return
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
                    yield Chunk(text + tail, len(new_ids), reason, stop=stop_text)
                    return
                if text or new_ids:
                    yield Chunk(text, len(new_ids))
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

    def shutdown(self) -> None:
        self._stopping.set()
        self._poller.join(timeout=5)
        with contextlib.suppress(Exception):
            self.executor.shutdown()

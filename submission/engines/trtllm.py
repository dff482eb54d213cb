"""In-process TensorRT-LLM: a prebuilt engine folder served without a server (production).

`start()` first inspects the engine folder without importing TensorRT-LLM and
refuses what cannot work (missing config or tokenizer, another TensorRT-LLM
version, a max sequence length below the token budget: trtllm_folder.py), then
imports `tensorrt_llm` (after the sandbox has started: fork after CUDA is
unsafe) and loads the engine in this process (trtllm_backends.py): through the
LLM API (1.x: `tensorrt_llm._tensorrt_engine.LLM`; 0.19-0.21:
`tensorrt_llm.LLM`) with its executor kept in-process
(`engine.trtllm.single_process`), or through `ModelRunnerCpp`'s executor where
that API is missing or, before 0.19, cannot abort a request.

Stop strings: single-token ones (`</tool_call>`, `<|im_end|>` in Qwen2.5) go
to the engine as stop token ids, the rest as stop strings; the engine keeps the
stop text in its output (`include_stop_str_in_output`) and `StopMatcher` cuts
it, so a stop string is never half-streamed before the engine trims it. Stop
token ids asked for (harmony's `<|call|>`) go the same way and come back as
`Chunk.stop_token`. A prompt may be token ids (the engine takes them as they are).
Sources of every TensorRT-LLM fact: docs/engines.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from submission.config import Config, TrtllmEngineConfig
from submission.engines.base import Chunk, EngineError, Prompt, SamplingParams
from submission.engines.trtllm_backends import (
    DecodeCounters,
    LlmApiBackend,
    RunnerBackend,
    RuntimeSettings,
)
from submission.engines.trtllm_folder import EngineFacts, check_fit, inspect_engine_dir, release

log = logging.getLogger(__name__)

# The LLM API's results gained `abort()` in 0.19.0 (release notes: "Added abort request
# support"); before it a closed stream keeps generating, so "auto" takes ModelRunnerCpp.
LLM_API_ABORT_SINCE = (0, 19)


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
        self.token_prompts = True
        self.facts: EngineFacts | None = None
        self._backend: LlmApiBackend | RunnerBackend | None = None
        self.tokenizer: Any = None
        self.counters = DecodeCounters()
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
        if self.config.enable_block_reuse and facts.paged_context_fmha is False:
            log.warning(
                "trtllm: KV block reuse is on but the engine was built without "
                "--use_paged_context_fmha enable (%s): no prefix is reused; rebuild with it",
                facts.source,
            )
        self.facts = facts
        self.tokenizer = await asyncio.to_thread(_load_tokenizer, self.tokenizer_dir)
        self._backend = await asyncio.to_thread(self._load_backend, tensorrt_llm)

    def _load_backend(self, tensorrt_llm: Any) -> LlmApiBackend | RunnerBackend:
        api = self.config.api
        version = str(tensorrt_llm.__version__)
        can_abort = release(version) >= LLM_API_ABORT_SINCE
        ranks = self.facts.tp_size if self.facts is not None else 1
        if ranks > 1:
            # ModelRunnerCpp runs one rank per process (mpirun -n N); the LLM API spawns them.
            if api == "runner":
                raise EngineError(
                    f"trtllm: this engine is split over {ranks} GPUs (tp_size {ranks}); "
                    "ModelRunnerCpp would need mpirun: use engine.trtllm.api = 'auto' or 'llm'"
                )
            log.info("trtllm: engine split over %d GPUs (tensor parallel, MPI workers)", ranks)
        wants_llm = api == "llm" or (api == "auto" and (can_abort or ranks > 1))
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
            return LlmApiBackend(tensorrt_llm, llm_class, self)
        if api == "llm" or ranks > 1:
            raise EngineError("trtllm: the LLM API is needed here, and none is importable")
        log.info("trtllm: loading %s through ModelRunnerCpp", self.engine_dir)
        return RunnerBackend(self)

    def runtime_settings(self) -> RuntimeSettings:
        """engine.trtllm's load settings, reconciled with the engine folder (in one place)."""
        built = self.facts.max_batch_size if self.facts is not None else 0
        batch = self.config.max_batch_size
        if 0 < built < batch:
            log.warning(
                "trtllm: engine built for max_batch_size %d; using %d, not %d", built, built, batch
            )
            batch = built
        return RuntimeSettings(
            max_batch_size=batch,
            kv_cache_free_gpu_memory_fraction=self.config.kv_cache_free_gpu_memory_fraction,
            enable_block_reuse=self.config.enable_block_reuse,
            single_process=self.config.single_process,
            tensor_parallel_size=self.facts.tp_size if self.facts is not None else 1,
        )

    def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Chunk]:
        return self._stream(prompt, params)

    async def _stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Chunk]:
        if self._backend is None or self.facts is None:
            yield Chunk("", 0, "error", error="trtllm: start() was not called")
            return
        try:
            prompt_ids = (
                self.tokenizer.encode(prompt, add_special_tokens=False)
                if isinstance(prompt, str)
                else list(prompt)
            )
        except Exception as exc:
            yield Chunk("", 0, "error", error=f"trtllm: cannot tokenize the prompt: {exc}")
            return
        # The engine rejects an input over max_input_len, and prompt + max_tokens over
        # max_seq_len: a late TIR round that no longer fits ends as "length", not as an error.
        room = self.facts.sequence_room - len(prompt_ids)
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
                encoded = self.tokenizer.encode(stop, add_special_tokens=False)
                self._stop_ids[stop] = encoded[0] if len(encoded) == 1 else -1
            token = self._stop_ids[stop]
            if token >= 0:
                ids.append(token)
            else:
                strings.append(stop)
        return ids, strings

    def stop_token_texts(self, token_ids: tuple[int, ...]) -> dict[str, int]:
        """How each stop token id shows in the engine's text (special tokens kept) -> the id."""
        return {self.tokenizer.decode([t], skip_special_tokens=False): t for t in token_ids}

    def reused_kv_blocks(self) -> int | None:
        """KV-cache blocks served from the prefix cache so far, where the engine reports it."""
        return self._backend.reused_kv_blocks() if self._backend is not None else None

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


def _llm_class(tensorrt_llm: Any) -> Any:
    """The TensorRT-engine LLM class of the installed version, or None where it is missing."""
    major = release(str(tensorrt_llm.__version__))[0]
    try:
        if major >= 1:
            # In 1.x plain tensorrt_llm.LLM is the PyTorch backend; TRT engines load here.
            return importlib.import_module("tensorrt_llm._tensorrt_engine").LLM
        return tensorrt_llm.LLM
    except (ImportError, AttributeError):
        return None

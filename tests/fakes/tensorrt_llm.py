"""A contract fake of the TensorRT-LLM surface `submission.engines.trtllm` uses.

Written from TensorRT-LLM's public source (NVIDIA/TensorRT-LLM, Apache-2.0), read
for facts only; no code is copied. Release tags -> commits come from the
`tensorrt_llm` submodule of triton-inference-server/tensorrtllm_backend at its
tags (v0.17.0 350625cc, v0.18.0 3c046200, v0.19.0 c6f7d423, v0.20.0 79658429,
v0.21.0 b4b1185a); tensorrt_llm/version.py reads 0.16.0 at 42a7b092, 0.17.0 at
71213f72, 0.18.0 at 3c046200. Per version:
- docs/source/release-notes.md (stored revision 001eaece): 0.16.0 added the
  LLM API's `max_batch_size` / `max_num_tokens` runtime arguments; 0.19.0
  added "abort request support" (`GenerationResult.abort()`) and refactored
  `LlmArgs` with Pydantic; 0.18.x is 0.17.0 plus dependency updates. So a 0.x
  result before 0.19 has no `abort()` (modelled below), and before 0.16 `LLM`
  rejects `max_batch_size` (the dataclass `LlmArgs` has no such field).
- https://nvidia.github.io/TensorRT-LLM/0.19.0/llm-api/reference.html and
  .../0.21.0rc1/...: `LLM(model, tokenizer=None, tokenizer_mode='auto',
  skip_tokenizer_init=False, trust_remote_code=False, tensor_parallel_size=1,
  dtype='auto', revision=None, tokenizer_revision=None, **kwargs)`.
- tensorrt_llm/llmapi/llm_args.py (Pydantic revisions): `max_batch_size:
  Optional[int] = None`; an engine folder's config.json replaces
  `build_config` (`_load_config_from_engine`); a runtime `max_batch_size` above
  the engine's is a ValueError in `validate_build_config_with_runtime_params`
  (one revision clamps it with a warning instead; the fake takes the strict
  one). llm.py `_build_model`: `args.max_batch_size or
  build_config.max_batch_size` goes to the executor.
- tensorrt_llm/version.py and tensorrt_llm/sampling_params.py at 000a01de
  (1.0.0rc4): `SamplingParams` is a kw-only dataclass, `max_tokens` defaults
  to 32, `stop` / `stop_token_ids` / `include_stop_str_in_output=False` /
  `skip_special_tokens=True`, every sampling knob defaults to None.
- tensorrt_llm/_tensorrt_engine/__init__.py at 1620d4fd: 1.x exports the
  TensorRT-engine LLM there (`_TrtLLM as LLM`); plain `tensorrt_llm.LLM` is the
  PyTorch backend, which does not load a trtllm-build engine folder.
- tensorrt_llm/llmapi/llm.py at 00966934 (0.x `LLM`) and a 1.x revision
  (`BaseLLM` / `_TrtLLM`): `LLM(model, tokenizer=None, ..., **kwargs)`, 1.x
  rejects unknown kwargs with ValueError; `generate_async(inputs,
  sampling_params=None, ..., streaming=False)` takes a str or token ids and
  raises ValueError when prompt length + max_tokens > the engine's max_seq_len.
- tensorrt_llm/executor/result.py at 005bc848: outputs[0] is a
  `CompletionOutput` (text, token_ids, finish_reason in stop/length/timeout/
  cancelled, stop_reason = the stop string or token id, `text_diff`);
  END_ID and STOP_WORDS both finish as "stop"; the stop words' tokens are cut
  from the output unless include_stop_str_in_output; `abort()` ends the
  request as "cancelled"; background errors surface from `async for`.
- tensorrt_llm/runtime/model_runner_cpp.py at 03832911 (and two other stored
  revisions, old and new, with the same three keywords): `ModelRunnerCpp.from_dir(
  engine_dir, *, max_batch_size=None, kv_cache_free_gpu_memory_fraction=None,
  kv_cache_enable_block_reuse=False, ...)`, keyword-only; a `max_batch_size`
  above the engine's falls back to the engine's. Its executor in `.executor`
  (older versions: `.session`).
- cpp/tensorrt_llm/pybind/executor/request.cpp: `Request(input_token_ids,
  max_tokens, streaming=False, sampling_config, output_config, end_id, pad_id,
  ..., stop_words)`; streaming responses carry only the new tokens.

- ReDrafter (explicit draft tokens), read near 1.0.0 (docs/engines.md has the
  revisions): cpp/include/tensorrt_llm/executor/types.h `DecodingMode::
  ExplicitDraftTokens()` = stop criteria (stop words, max length) + explicit EOS
  only, so top_k/top_p/min_p/repetition_penalty are not applied;
  cpp/tensorrt_llm/layers/explicitDraftTokensLayer.cpp `setup` takes only the
  random seed and the temperature, defaulting it (1.0) when the request has none;
  a greedy drafter (`redrafter_greedy_search`) decodes greedily whatever is sent.
  Up to draft_len_per_beam + 1 tokens are accepted per step (one beam's drafts,
  then the base model's own token: tensorrt_llm/models/redrafter/redrafter_helper.py
  at 20709ce9, `_validate_draft_tokens` counts accepted tokens within one beam of
  beam_length = draft_len_per_beam + 1; max_draft_len is num_beams times that, so
  the two bounds agree only with one beam), so a stop word can end mid-step with
  accepted tokens after it; executor/result.py then finishes "stop" but sets
  `stop_reason` only when the stop word's tokens end the output. The temperature
  is applied as its inverse times the logits in the engine's dtype
  (cpp/tensorrt_llm/kernels/speculativeDecoding/explicitDraftTokensKernels.cu at
  05316d33: `__frcp_rn(temperature)` stored as T; redrafter_helper.py
  `_process_logits_and_hidden_states`: `logits * inverted_temperature`): in a
  float16 engine a logit beyond 65504 x T overflows to inf and sampling breaks;
  the fake's logits reach `MAX_LOGIT`, so such a request fails.
- KV block reuse needs an engine built with `--use_paged_context_fmha enable`
  (docs/source/kv_cache_reuse.md): without it the fake reuses no block.
- Tensor parallelism: tensorrt_llm/llmapi/llm_args.py `_load_config_from_engine`
  (stored revision fcd3f316 and older ones): `tensor_parallel_size` must be 1 or
  the engine's `pretrained_config.mapping.tp_size` (else ValueError "tp_size X is
  not consistent with the engine's tp_size Y"), and the engine's tp is used; a
  tp > 1 engine runs one MPI rank per GPU, so TLLM_WORKER_USE_SINGLE_PROCESS
  (`enable_worker_single_process_for_tp1`) does not apply and mpi4py is needed.
  ModelRunnerCpp needs mpirun for tp > 1: the fake refuses it in one process.
- tensorrt_llm/executor/executor.py (005bc848, ed53795b) `GenerationExecutor.create`:
  on one GPU the LLM API's executor is a worker process started through mpi4py
  unless TLLM_WORKER_USE_SINGLE_PROCESS=1 (llmapi/utils.py
  `enable_worker_single_process_for_tp1`); without mpi4py that fails. (That the
  real `import tensorrt_llm` imports mpi4py too is not modelled: doctor checks it.)
- Iteration stats: `LLM.get_stats(timeout)` dicts with kvCacheStats.reusedBlocks
  (docs/source/commands/trtllm-serve.rst's /metrics example), and the executor's
  `get_latest_iteration_stats()` objects with `kv_cache_stats.reused_blocks`
  (pybind bindings); blocks of `tokens_per_block` prompt tokens, reused when an
  earlier request had the same prefix.

`install(monkeypatch, ...)` puts the fake modules in `sys.modules`; the fake
"model" writes whatever `respond(prompt_text)` returns, tokenized with the
engine folder's real tokenizer, `tokens_per_step` tokens per response (with a
drafter: `accepted_per_step`, cycled, each at most draft_len_per_beam + 1).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import importlib.util
import itertools
import json
import os
import queue
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class RequestError(RuntimeError):
    """What the real executor raises into a result's iterator on a background error."""


@dataclass(kw_only=True)
class SamplingParams:
    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    bad: str | list[str] | None = None
    bad_token_ids: list[int] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    n: int = 1
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_p: float | None = None
    logprobs: int | None = None
    ignore_eos: bool = False
    detokenize: bool = True
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True


@dataclass(kw_only=True)
class KvCacheConfig:
    enable_block_reuse: bool = True
    max_tokens: int | None = None
    free_gpu_memory_fraction: float | None = 0.9
    enable_partial_reuse: bool = True


# Releases that changed what the fake does (see the docstring for the sources).
RUNTIME_BATCH_ARGS_SINCE = (0, 16)  # LLM(max_batch_size=..., max_num_tokens=...)
ABORT_SINCE = (0, 19)  # GenerationResult.abort()
RUNTIME_BATCH_ARGS = {"max_batch_size", "max_num_tokens"}

# LlmArgs fields the LLM accepts as kwargs (a subset; anything else is a ValueError).
LLM_ARGS = {
    "kv_cache_config",
    "max_batch_size",
    "max_num_tokens",
    "max_seq_len",
    "max_beam_width",
    "enable_chunked_prefill",
    "build_config",
    "workspace",
    "batching_type",
    "scheduler_config",
}


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    _last_text_len: int = 0

    @property
    def text_diff(self) -> str:
        return self.text[self._last_text_len :]


class FinishReason(enum.Enum):
    NOT_FINISHED = 0
    END_ID = 1
    STOP_WORDS = 2
    LENGTH = 3
    TIMED_OUT = 4
    CANCELLED = 5


SINGLE_PROCESS_ENV = "TLLM_WORKER_USE_SINGLE_PROCESS"
DEFAULT_TEMPERATURE = 1.0  # DefaultDecodingParams::getTemperature()
TOKENS_PER_BLOCK = 32
FLOAT16_MAX = 65504.0
MAX_LOGIT = 100.0  # the fake model's largest |logit| (a 14B model's reach tens)


@dataclass
class FakeModel:
    """The scripted "model" behind both APIs, plus what the tests inspect afterwards."""

    engine_dir: Path
    respond: Callable[[str], str]
    tokens_per_step: int = 3
    # With a drafter: tokens accepted per step, cycled (each capped at draft_len_per_beam + 1).
    accepted_per_step: tuple[int, ...] = (4, 1, 3, 2)
    fail_after_tokens: int | None = None  # raise a background error after this many tokens
    requests: list[dict[str, Any]] = field(default_factory=list)
    loaded: list[dict[str, Any]] = field(default_factory=list)
    tokenizer: Any = None
    cached_blocks: set[tuple[int, ...]] = field(default_factory=set)
    reused_blocks: int = 0

    def engine_config(self) -> dict[str, Any]:
        return json.loads((self.engine_dir / "config.json").read_text())

    def max_seq_len(self) -> int:
        return int(self.engine_config()["build_config"]["max_seq_len"])

    def drafter(self) -> str | None:
        """None, "sampling" or "greedy": what the engine folder's ReDrafter head does."""
        pretrained = self.engine_config().get("pretrained_config") or {}
        if "redrafter_num_beams" not in pretrained:
            return None
        return "greedy" if pretrained.get("redrafter_greedy_search", True) else "sampling"

    def applied_sampling(self, **asked: Any) -> dict[str, Any]:
        """What the engine's decoding applies of the sampling fields a request carried."""
        drafter = self.drafter()
        if drafter == "greedy":
            return {"greedy": True}
        if drafter == "sampling":
            temperature = asked["temperature"]
            applied = {
                "temperature": DEFAULT_TEMPERATURE if temperature is None else temperature,
                "seed": asked["seed"],
            }
            dtype = (self.engine_config().get("pretrained_config") or {}).get("dtype")
            if dtype == "float16" and MAX_LOGIT / applied["temperature"] > FLOAT16_MAX:
                applied["overflow"] = True  # logits * (1/T) past float16's range
            return applied
        if asked["top_k"] == 1 or all(asked[k] is None for k in ("temperature", "top_k", "top_p")):
            return {"greedy": True}
        return {k: v for k, v in asked.items() if v is not None}

    def paged_context_fmha(self) -> bool:
        plugins = self.engine_config()["build_config"].get("plugin_config") or {}
        return bool(plugins.get("use_paged_context_fmha", True))

    def tp_size(self) -> int:
        mapping = (self.engine_config().get("pretrained_config") or {}).get("mapping") or {}
        return int(mapping.get("tp_size") or 1)

    def note_prompt(self, prompt_ids: list[int], reuse: bool = True) -> None:
        """Prefix caching: full blocks of the prompt seen in an earlier request are reused
        (with block reuse on and an engine built with paged context FMHA)."""
        if not (reuse and self.paged_context_fmha()):
            return
        full = len(prompt_ids) // TOKENS_PER_BLOCK
        for n in range(1, full + 1):
            prefix = tuple(prompt_ids[: n * TOKENS_PER_BLOCK])
            if prefix in self.cached_blocks:
                self.reused_blocks += 1
            else:
                self.cached_blocks.add(prefix)

    def step_sizes(self) -> Any:
        """Tokens per step: one fixed size, or a drafter's accepted counts (cycled)."""
        if self.drafter() is None:
            return itertools.repeat(self.tokens_per_step)
        pretrained = self.engine_config().get("pretrained_config") or {}
        most = int(pretrained.get("redrafter_draft_len_per_beam", 3)) + 1
        return itertools.cycle([min(n, most) for n in self.accepted_per_step])

    def steps(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        end_id: int,
        stop_words: list[list[int]],
        overflow: bool = False,
    ) -> Any:
        """Yield (new_ids, FinishReason or None, matched stop word index or None)."""
        if overflow:
            raise RequestError("fake executor: NaN in the sampling probabilities (float16 inf)")
        prompt_text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        planned = self.tokenizer.encode(self.respond(prompt_text), add_special_tokens=False)
        planned.append(end_id)
        produced: list[int] = []
        drafted = self.drafter() is not None
        for size in self.step_sizes():
            new: list[int] = []
            ended: tuple[FinishReason, int | None] | None = None
            for token in planned[len(produced) : len(produced) + size]:
                if self.fail_after_tokens is not None and len(produced) >= self.fail_after_tokens:
                    raise RequestError("fake executor: CUDA error: an illegal memory access")
                if token == end_id:
                    ended = ended or (FinishReason.END_ID, None)
                    break
                new.append(token)
                produced.append(token)
                for index, word in enumerate(stop_words):
                    if ended is None and produced[-len(word) :] == word:
                        ended = (FinishReason.STOP_WORDS, index)
                if ended is None and len(produced) >= max_tokens:
                    ended = (FinishReason.LENGTH, None)
                # Without a drafter a step is one token's decision; a drafter's step
                # accepts its tokens together, so tokens past a stop word still come.
                if ended is not None and not drafted:
                    break
            if ended is not None:
                yield new, ended[0], ended[1]
                return
            yield new, None, None


def release(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


class RequestOutput:
    """The streaming result of `generate_async` (real: GenerationResult + RequestOutput).

    No `abort()`: the 0.x results before 0.19 (`AbortableRequestOutput` has it).
    """

    def __init__(
        self,
        model: FakeModel,
        prompt_ids: list[int],
        params: SamplingParams,
        overflow: bool = False,
    ) -> None:
        self.model = model
        self.params = params
        self.outputs = [CompletionOutput(0)]
        self.finished = False
        self._aborted = False
        stops = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
        self._stop_reasons: list[int | str] = list(params.stop_token_ids or []) + stops
        self._stop_words = [[t] for t in params.stop_token_ids or []] + [
            model.tokenizer.encode(s, add_special_tokens=False) for s in stops
        ]
        end_id = params.end_id if params.end_id is not None else model.tokenizer.eos_token_id
        self._steps = model.steps(prompt_ids, params.max_tokens, end_id, self._stop_words, overflow)

    def __aiter__(self) -> RequestOutput:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        await asyncio.sleep(0)
        out = self.outputs[0]
        out._last_text_len = len(out.text)
        if self._aborted:
            self.finished = True
            out.finish_reason = "cancelled"
            return self
        new, why, _ = next(self._steps)
        out.token_ids.extend(new)
        if why is not None:
            self.finished = True
            if why is FinishReason.STOP_WORDS:
                out.finish_reason = "stop"
                # result.py names the stop (and trims it) only when it ends the output.
                for reason, word in zip(self._stop_reasons, self._stop_words, strict=True):
                    if out.token_ids[-len(word) :] == word:
                        out.stop_reason = reason
                        if not self.params.include_stop_str_in_output:
                            del out.token_ids[-len(word) :]
                        break
            else:
                out.finish_reason = {FinishReason.END_ID: "stop", FinishReason.LENGTH: "length"}[
                    why
                ]
        out.text = self.model.tokenizer.decode(
            out.token_ids, skip_special_tokens=self.params.skip_special_tokens
        )
        return self


class AbortableRequestOutput(RequestOutput):
    """0.19+: `abort()` ends the request as "cancelled"."""

    def abort(self) -> None:
        self._aborted = True
        self.model.requests[-1]["aborted"] = True


def _check_engine_dir(model: str | Path) -> None:
    if not (Path(model) / "config.json").is_file():
        raise ValueError(f"{model} is not an engine folder (no config.json)")


class TrtLLM:
    """The TensorRT-engine LLM: `tensorrt_llm.LLM` in 0.x, `_tensorrt_engine.LLM` in 1.x."""

    fake_model: FakeModel  # bound by install()
    accepted_args: frozenset[str] = frozenset(LLM_ARGS)  # bound by install()
    result_class: type[RequestOutput] = AbortableRequestOutput  # bound by install()

    def __init__(
        self,
        model: str | Path,
        tokenizer: str | Path | None = None,
        tokenizer_mode: str = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        for key in kwargs:
            if key not in self.accepted_args:
                raise ValueError(f"LLM got invalid argument: {key}")
        _check_engine_dir(model)
        built = json.loads((Path(model) / "config.json").read_text())["build_config"]
        runtime_batch = kwargs.get("max_batch_size")
        if runtime_batch is not None and runtime_batch > built["max_batch_size"]:
            raise ValueError(
                f"max_batch_size [{runtime_batch}] is greater than build_config.max_batch_size "
                f"[{built['max_batch_size']}] in build_config"
            )
        if not isinstance(kwargs.get("kv_cache_config", KvCacheConfig()), KvCacheConfig):
            raise TypeError("kv_cache_config must be a KvCacheConfig")
        engine_tp = self.fake_model.tp_size()
        if tensor_parallel_size not in (1, engine_tp):
            raise ValueError(
                f"tp_size {tensor_parallel_size} is not consistent with the engine's tp_size "
                f"{engine_tp}"
            )
        # TLLM_WORKER_USE_SINGLE_PROCESS keeps only a tp 1 executor in this process.
        in_process = os.environ.get(SINGLE_PROCESS_ENV, "0") == "1" and engine_tp == 1
        if not in_process and importlib.util.find_spec("mpi4py") is None:
            # GenerationExecutorProxy: the worker process is spawned through mpi4py.
            raise ModuleNotFoundError("No module named 'mpi4py'")
        from transformers import AutoTokenizer

        self.model = self.fake_model
        self.model.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer or model))
        self.model.loaded.append(
            {
                "api": "llm",
                "model": str(model),
                "worker": "in-process" if in_process else "mpi",
                "ranks": engine_tp,
                "tensor_parallel_size": tensor_parallel_size,
                **kwargs,
            }
        )
        self._shutdown = False

    def generate_async(
        self,
        inputs: str | list[int],
        sampling_params: SamplingParams | None = None,
        lora_request: Any = None,
        prompt_adapter_request: Any = None,
        streaming: bool = False,
        kv_cache_retention_config: Any = None,
        disaggregated_params: Any = None,
        scheduling_params: Any = None,
        cache_salt: str | None = None,
    ) -> RequestOutput:
        if self._shutdown:
            raise RuntimeError("LLM is shutting down")
        params = sampling_params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"The sampling_params must be type SamplingParams, got {params!r}")
        if isinstance(inputs, str):
            prompt_ids = self.model.tokenizer.encode(inputs, add_special_tokens=False)
        else:
            prompt_ids = list(inputs)
        if len(prompt_ids) + params.max_tokens > self.model.max_seq_len():
            raise ValueError(
                f"The sum of prompt length ({len(prompt_ids)}) and max_tokens "
                f"({params.max_tokens}) should not exceed max_seq_len ({self.model.max_seq_len()})"
            )
        applied = self.model.applied_sampling(
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            repetition_penalty=params.repetition_penalty,
            seed=params.seed,
        )
        self.model.note_prompt(prompt_ids)
        self.model.requests.append(
            {
                "prompt_ids": prompt_ids,
                "params": params,
                "streaming": streaming,
                "aborted": False,
                "applied": applied,
            }
        )
        overflow = bool(applied.get("overflow"))
        return self.result_class(self.model, prompt_ids, params, overflow)

    def get_stats(self, timeout: float = 2) -> list[dict[str, Any]]:
        return [{"iter": 0, "kvCacheStats": {"reusedBlocks": self.model.reused_blocks}}]

    def shutdown(self) -> None:
        self._shutdown = True


class TorchLLM:
    """1.x plain `tensorrt_llm.LLM`: the PyTorch backend, which cannot load engine folders."""

    def __init__(self, model: str | Path, *args: Any, **kwargs: Any) -> None:
        raise ValueError(f"{model}: the PyTorch backend loads HF checkpoints, not TRT engines")


# ---- the executor API behind ModelRunnerCpp ---------------------------------------------


@dataclass(kw_only=True)
class ExecutorSamplingConfig:
    beam_width: int = 1
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_p: float | None = None


@dataclass(kw_only=True)
class OutputConfig:
    return_log_probs: bool = False
    return_context_logits: bool = False
    return_generation_logits: bool = False
    exclude_input_from_output: bool = False


@dataclass(kw_only=True)
class Request:
    input_token_ids: list[int]
    max_tokens: int
    streaming: bool = False
    sampling_config: ExecutorSamplingConfig = field(default_factory=ExecutorSamplingConfig)
    output_config: OutputConfig = field(default_factory=OutputConfig)
    end_id: int | None = None
    pad_id: int | None = None
    position_ids: list[int] | None = None
    bad_words: list[list[int]] | None = None
    stop_words: list[list[int]] | None = None


@dataclass
class Result:
    is_final: bool
    output_token_ids: list[list[int]]
    finish_reasons: list[FinishReason]


@dataclass
class Response:
    request_id: int
    result: Result | None = None
    error_msg: str = ""

    def has_error(self) -> bool:
        return bool(self.error_msg)


class Executor:
    """Runs requests on a worker thread, one step per request per tick, like in-flight batching."""

    def __init__(self, model: FakeModel) -> None:
        self.model = model
        self._next_id = 1
        self._active: dict[int, Any] = {}
        self._cancelled: set[int] = set()
        self._responses: queue.Queue[Response] = queue.Queue()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, daemon=True)
        self._worker.start()

    def enqueue_request(self, request: Request) -> int:
        if not isinstance(request, Request):
            raise TypeError("enqueue_request takes an executor Request")
        if request.end_id is None:
            raise ValueError("end_id is required")
        with self._lock:
            request_id = self._next_id
            self._next_id += 1
            stop_words = request.stop_words or []
            sampling = request.sampling_config
            applied = self.model.applied_sampling(
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                min_p=sampling.min_p,
                repetition_penalty=sampling.repetition_penalty,
                seed=sampling.seed,
            )
            steps = self.model.steps(
                request.input_token_ids,
                request.max_tokens,
                request.end_id,
                stop_words,
                bool(applied.get("overflow")),
            )
            self._active[request_id] = steps
            self.model.note_prompt(list(request.input_token_ids))
            self.model.requests.append(
                {"request": request, "id": request_id, "aborted": False, "applied": applied}
            )
        return request_id

    def get_latest_iteration_stats(self) -> list[Any]:
        kv = types.SimpleNamespace(reused_blocks=self.model.reused_blocks)
        return [types.SimpleNamespace(kv_cache_stats=kv)]

    def cancel_request(self, request_id: int) -> None:
        with self._lock:
            self._cancelled.add(request_id)
            for record in self.model.requests:
                if record.get("id") == request_id:
                    record["aborted"] = True

    def await_responses(self, timeout: datetime.timedelta | None = None) -> list[Response]:
        wait = None if timeout is None else timeout.total_seconds()
        try:
            first = self._responses.get(timeout=wait)
        except queue.Empty:
            return []
        responses = [first]
        while not self._responses.empty():
            responses.append(self._responses.get_nowait())
        return responses

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            with self._lock:
                active = list(self._active.items())
            for request_id, steps in active:
                if request_id in self._cancelled:
                    self._finish(request_id, [], FinishReason.CANCELLED)
                    continue
                try:
                    new, why, _ = next(steps)
                except RequestError as exc:
                    with self._lock:
                        del self._active[request_id]
                    self._responses.put(Response(request_id, error_msg=str(exc)))
                    continue
                if why is None:
                    self._responses.put(
                        Response(request_id, Result(False, [new], [FinishReason.NOT_FINISHED]))
                    )
                else:
                    self._finish(request_id, new, why)

    def _finish(self, request_id: int, new: list[int], why: FinishReason) -> None:
        with self._lock:
            self._active.pop(request_id, None)
        self._responses.put(Response(request_id, Result(True, [new], [why])))

    def shutdown(self) -> None:
        self._stop.set()
        self._worker.join(timeout=5)


class ModelRunnerCpp:
    fake_model: FakeModel  # bound by install()
    executor_attr: str = "executor"

    def __init__(self, executor: Executor, executor_attr: str) -> None:
        setattr(self, executor_attr, executor)

    @classmethod
    def from_dir(
        cls,
        engine_dir: str,
        *,
        lora_dir: str | None = None,
        rank: int = 0,
        max_batch_size: int | None = None,
        max_input_len: int | None = None,
        max_output_len: int | None = None,
        max_beam_width: int | None = None,
        kv_cache_free_gpu_memory_fraction: float | None = None,
        max_tokens_in_paged_kv_cache: int | None = None,
        kv_cache_enable_block_reuse: bool = False,
        enable_chunked_context: bool = False,
        debug_mode: bool = False,
    ) -> ModelRunnerCpp:
        _check_engine_dir(engine_dir)
        if cls.fake_model.tp_size() > 1:  # one process is one MPI rank
            raise RuntimeError(
                f"the engine has {cls.fake_model.tp_size()} ranks: run under mpirun -n "
                f"{cls.fake_model.tp_size()}"
            )
        from transformers import AutoTokenizer

        model = cls.fake_model
        model.tokenizer = AutoTokenizer.from_pretrained(engine_dir)
        model.loaded.append(
            {
                "api": "runner",
                "max_batch_size": max_batch_size,
                "kv_cache_free_gpu_memory_fraction": kv_cache_free_gpu_memory_fraction,
                "kv_cache_enable_block_reuse": kv_cache_enable_block_reuse,
            }
        )
        return cls(Executor(model), cls.executor_attr)


def install(
    monkeypatch: Any,
    engine_dir: Path,
    respond: Callable[[str], str],
    version: str = "1.0.0",
    llm_api: bool = True,
    runner_executor_attr: str = "executor",
    **model_options: Any,
) -> FakeModel:
    """Put fake `tensorrt_llm` modules of `version` into sys.modules; return the fake model."""
    model = FakeModel(engine_dir=engine_dir, respond=respond, **model_options)
    # The real switch is read once per process; each test starts without it.
    monkeypatch.setenv(SINGLE_PROCESS_ENV, "0")
    accepted = set(LLM_ARGS)
    if release(version) < RUNTIME_BATCH_ARGS_SINCE:
        accepted -= RUNTIME_BATCH_ARGS
    result_class = AbortableRequestOutput if release(version) >= ABORT_SINCE else RequestOutput
    llm_class = type(
        "LLM",
        (TrtLLM,),
        {"fake_model": model, "accepted_args": frozenset(accepted), "result_class": result_class},
    )
    runner_class = type(
        "ModelRunnerCpp",
        (ModelRunnerCpp,),
        {"fake_model": model, "executor_attr": runner_executor_attr},
    )
    root = types.ModuleType("tensorrt_llm")
    root.__version__ = version
    root.SamplingParams = SamplingParams
    llmapi = types.ModuleType("tensorrt_llm.llmapi")
    llmapi.KvCacheConfig = KvCacheConfig
    runtime = types.ModuleType("tensorrt_llm.runtime")
    runtime.ModelRunnerCpp = runner_class
    bindings = types.ModuleType("tensorrt_llm.bindings")
    executor = types.ModuleType("tensorrt_llm.bindings.executor")
    executor.Request = Request
    executor.SamplingConfig = ExecutorSamplingConfig
    executor.OutputConfig = OutputConfig
    executor.FinishReason = FinishReason
    bindings.executor = executor
    modules = {
        "tensorrt_llm": root,
        "tensorrt_llm.llmapi": llmapi,
        "tensorrt_llm.runtime": runtime,
        "tensorrt_llm.bindings": bindings,
        "tensorrt_llm.bindings.executor": executor,
    }
    if llm_api:
        if int(version.split(".")[0]) >= 1:
            root.LLM = TorchLLM
            engine_module = types.ModuleType("tensorrt_llm._tensorrt_engine")
            engine_module.LLM = llm_class
            modules["tensorrt_llm._tensorrt_engine"] = engine_module
        else:
            root.LLM = llm_class
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return model


def sampling_params_of(record: dict[str, Any]) -> dict[str, Any]:
    """A request's sampling parameters as a dict, whichever API sent it."""
    if "params" in record:
        return dataclasses.asdict(record["params"])
    request = record["request"]
    return {**dataclasses.asdict(request.sampling_config), "max_tokens": request.max_tokens}

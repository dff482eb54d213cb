"""transformers reference engine: in-process, several streams batched, cancellable.

One decode thread owns the model. A new request is prefilled alone, then its
KV cache joins the running batch (left-padded to a common length); every step
decodes one token for every request in the batch; a finished or cancelled
request leaves the batch at the next step. Sampling is per request
(temperature, top-k, top-p, min-p, repetition penalty, seed), so parallel
attempts differ as they do on the production engine. Slow next to TensorRT-LLM,
but it runs wherever torch does (CPU in CI).

A prompt is text or token ids (a family that renders tokens, e.g. harmony). Every
chunk carries its token ids; a stop token id ends the stream with its id last in
`token_ids` and its text left out; with `top_logprobs` each token's entropy over
the model's top log-probabilities comes along (from the logits already computed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from submission.config import Config, HfEngineConfig
from submission.engines.base import Chunk, EngineError, Prompt, SamplingParams
from submission.engines.streamtext import IncrementalDecoder, StopMatcher

log = logging.getLogger(__name__)

# How long the idle decode thread sleeps between looks for new requests or shutdown.
IDLE_WAIT_S = 0.05


@dataclass
class _Request:
    """One stream's state, owned by the decode thread once admitted."""

    prompt_ids: list[int]
    params: SamplingParams
    deliver: Callable[[Chunk], None]
    decoder: IncrementalDecoder
    matcher: StopMatcher
    generator: Any = None  # torch.Generator seeded from params.seed
    seen_ids: Any = None  # tensor of prompt + generated ids (repetition penalty)
    produced: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)


class HfEngine:
    """A transformers causal LM behind the Engine protocol."""

    name = "hf"
    greedy = False
    token_prompts = True

    def __init__(self, config: HfEngineConfig) -> None:
        if not config.model:
            raise EngineError("hf: set engine.hf.model (a local model folder or hub id)")
        self.config = config
        self._pending: queue.Queue[_Request] = queue.Queue()
        self._stopping = threading.Event()
        self._wakeup = threading.Event()  # set when a request arrives
        self._thread: threading.Thread | None = None
        self._active_count = 0  # requests in the batch (read by benchmarks and tests)
        self.model: Any = None
        self.tokenizer: Any = None

    @classmethod
    def from_config(cls, config: Config) -> HfEngine:
        return cls(config.engine.hf)

    @property
    def active_requests(self) -> int:
        return self._active_count

    async def start(self) -> None:
        if self._thread is not None:
            return
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._decode_loop, name="hf-decode", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = self.config.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.config.model)
            attention = self.config.attn_implementation
            model = AutoModelForCausalLM.from_pretrained(
                self.config.model,
                dtype=getattr(torch, dtype),
                **({} if attention == "auto" else {"attn_implementation": attention}),
            )
        except (OSError, ValueError) as exc:
            raise EngineError(f"hf: cannot load {self.config.model}: {exc}") from None
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        # transformers 5.2x renamed `past_key_values` to `cache`; accept both.
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = {e for e in eos_ids if e is not None}

    def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Chunk]:
        return self._stream(prompt, params)

    async def _stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Chunk]:
        if self._thread is None:
            yield Chunk("", 0, "error", error="hf: start() was not called")
            return
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Chunk] = asyncio.Queue()
        prompt_ids = (
            self.tokenizer.encode(prompt, add_special_tokens=False)
            if isinstance(prompt, str)
            else list(prompt)
        )
        request = _Request(
            prompt_ids=prompt_ids,
            params=params,
            deliver=functools.partial(_deliver, loop, chunks),
            decoder=IncrementalDecoder(self.tokenizer),
            matcher=StopMatcher(params.stop),
        )
        self._pending.put(request)
        self._wakeup.set()
        try:
            while True:
                chunk = await chunks.get()
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            request.cancelled.set()  # the decode thread drops it at its next step

    async def close(self) -> None:
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    # ---- the decode thread ------------------------------------------------------------

    def _decode_loop(self) -> None:
        import torch

        batch = _Batch(self)
        while not self._stopping.is_set():
            try:
                with torch.inference_mode():
                    self._wakeup.clear()  # before looking: a later arrival sets it again
                    self._admit(batch)
                    batch.drop_finished()
                    self._active_count = len(batch.requests)
                    if not batch.requests:
                        self._wakeup.wait(IDLE_WAIT_S)
                        continue
                    batch.step()
                    self._active_count = len(batch.requests)
            except Exception as exc:  # e.g. CUDA OOM: end these streams, keep serving
                log.exception("hf: decode step failed")
                batch.fail_all(f"hf: {type(exc).__name__}: {exc}")
                self._active_count = 0
        batch.fail_all("hf: engine closed")
        while not self._pending.empty():
            self._pending.get_nowait().deliver(Chunk("", 0, "error", error="hf: engine closed"))

    def _admit(self, batch: _Batch) -> None:
        while len(batch.requests) < self.config.max_batch_size:
            try:
                request = self._pending.get_nowait()
            except queue.Empty:
                return
            if request.cancelled.is_set():
                continue
            try:
                batch.prefill(request)
            except Exception as exc:
                log.warning("hf: prefill failed: %s", exc)
                request.deliver(Chunk("", 0, "error", error=f"hf: {type(exc).__name__}: {exc}"))


class _Batch:
    """The running batch: its requests, their left-padded KV cache and attention mask."""

    def __init__(self, engine: HfEngine) -> None:
        self.engine = engine
        self.requests: list[_Request] = []
        self.cache: Any = None
        self.mask: Any = None  # [batch, cache length], 1 = a real token
        self.padded = False  # some row has padding (the mask is not all ones)
        self.last_tokens: list[int] = []

    def _forward(self, **kwargs: Any) -> Any:
        cache = kwargs.pop("cache")
        return self.engine.model(**kwargs, **{self.engine._cache_arg: cache}, use_cache=True)

    def prefill(self, request: _Request) -> None:
        import torch
        from transformers import DynamicCache

        engine = self.engine
        ids = torch.tensor([request.prompt_ids], device=engine.device)
        # Full-length layers only, even for a model with sliding-window layers (gpt-oss): rows
        # are joined by left-padding every layer to one length; the window comes from the mask.
        cache = DynamicCache()
        # In chunks, keeping one position's logits: a 16k-token prompt in one pass would hold
        # gigabytes of attention scores (eager) and of logits.
        step = engine.config.prefill_chunk_tokens
        for start in range(0, ids.shape[1], step):
            output = self._forward(
                input_ids=ids[:, start : start + step], cache=cache, logits_to_keep=1
            )
            cache = _cache_of(output)
        request.seen_ids = ids[0]
        if request.params.seed is not None:
            request.generator = torch.Generator(device=engine.device)
            request.generator.manual_seed(request.params.seed)
        mask = torch.ones((1, ids.shape[1]), dtype=torch.long, device=engine.device)
        self._join(request, cache, mask)
        logits = output.logits[:, -1]
        entropy = _entropies(logits, [request])[0]
        self._emit(len(self.requests) - 1, self._sample(logits, [request])[0], entropy)

    def _join(self, request: _Request, cache: Any, mask: Any) -> None:
        import torch
        from transformers import DynamicCache

        if self.cache is None:
            self.cache, self.mask = cache, mask
        else:
            self.padded = self.padded or self.mask.shape[1] != mask.shape[1]
            old_len, new_len = self.mask.shape[1], mask.shape[1]
            length = max(old_len, new_len)

            def left_pad(tensor: Any, pad: int) -> Any:
                if pad == 0:
                    return tensor
                shape = list(tensor.shape)
                shape[-2 if tensor.dim() == 4 else -1] = pad
                zeros = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
                return torch.cat([zeros, tensor], dim=-2 if tensor.dim() == 4 else -1)

            layers = [
                (
                    torch.cat(
                        [left_pad(a.keys, length - old_len), left_pad(b.keys, length - new_len)]
                    ),
                    torch.cat(
                        [left_pad(a.values, length - old_len), left_pad(b.values, length - new_len)]
                    ),
                )
                for a, b in zip(self.cache.layers, cache.layers, strict=True)
            ]
            self.cache = DynamicCache(ddp_cache_data=layers)
            self.mask = torch.cat(
                [left_pad(self.mask, length - old_len), left_pad(mask, length - new_len)]
            )
        self.requests.append(request)
        self.last_tokens.append(-1)

    def step(self) -> None:
        """Decode one token for every request in the batch."""
        import torch

        engine = self.engine
        positions = self.mask.sum(dim=1, keepdim=True)
        ones = torch.ones((len(self.requests), 1), dtype=self.mask.dtype, device=engine.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        tokens = torch.tensor([[t] for t in self.last_tokens], device=engine.device)
        # Without padding the mask is all ones: leaving it out lets attention use its fast path.
        mask = self.mask if self.padded else None
        output = self._forward(
            input_ids=tokens, attention_mask=mask, position_ids=positions, cache=self.cache
        )
        self.cache = _cache_of(output)
        logits = output.logits[:, -1]
        entropies = _entropies(logits, self.requests)
        for row, token in enumerate(self._sample(logits, self.requests)):
            self._emit(row, token, entropies[row])
        self.drop_finished()

    def _sample(self, logits: Any, requests: list[_Request]) -> list[int]:
        """One token per row of `logits` ([rows, vocab]), each with its request's sampling.

        One sort serves every row's top-k, top-p and min-p; each row draws its own
        uniform number from its own generator (seeded attempts stay reproducible in
        any batch) and inverts its distribution; one host sync for the whole batch.
        """
        import torch

        scores = logits.float()
        for row, request in enumerate(requests):
            penalty = request.params.repetition_penalty
            if penalty != 1.0:
                seen = request.seen_ids.unique()
                picked = scores[row, seen]
                scores[row, seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
        device = scores.device
        rows = len(requests)
        temperature = torch.tensor(
            [max(r.params.temperature, 1e-6) for r in requests], device=device
        ).unsqueeze(1)
        sorted_scores, order = (scores / temperature).sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        rank = torch.arange(probs.shape[1], device=device).unsqueeze(0)
        top_k = torch.tensor(
            [r.params.top_k or probs.shape[1] for r in requests], device=device
        ).unsqueeze(1)
        top_p = torch.tensor([r.params.top_p for r in requests], device=device).unsqueeze(1)
        min_p = torch.tensor([r.params.min_p for r in requests], device=device).unsqueeze(1)
        drop = (
            (rank >= top_k)
            | (probs.cumsum(dim=-1) - probs > top_p)
            | (probs < min_p * probs[:, :1])
        )
        probs = probs.masked_fill(drop, 0.0)
        cumulative = probs.cumsum(dim=-1)
        uniform = torch.cat(
            [torch.rand(1, generator=r.generator, device=device) for r in requests]
        ).unsqueeze(1)
        picked = torch.searchsorted(cumulative, uniform * cumulative[:, -1:]).clamp_(
            max=probs.shape[1] - 1
        )
        greedy = torch.tensor([r.params.temperature <= 0.0 for r in requests], device=device)
        picked = torch.where(greedy.unsqueeze(1), torch.zeros_like(picked), picked)
        return order.gather(1, picked).view(rows).tolist()

    def _emit(self, row: int, token: int, entropy: float | None = None) -> None:
        """Record `token` for `row`; deliver its text, and the end when it ends the request."""
        import torch

        request = self.requests[row]
        self.last_tokens[row] = token
        request.produced += 1
        if request.params.repetition_penalty != 1.0:
            new = torch.tensor([token], device=request.seen_ids.device)
            request.seen_ids = torch.cat([request.seen_ids, new])
        ids: dict[str, Any] = {"token_ids": (token,)}
        if entropy is not None:
            ids["token_entropies"] = (entropy,)
        if token in request.params.stop_token_ids:
            # The stop token's own text is left out; what was pending before it is not.
            text, stop = request.matcher.feed(request.decoder.flush())
            text += "" if stop else request.matcher.flush()
            self._finish(row, Chunk(text, 1, "stop", stop=stop, stop_token=token, **ids))
            return
        if token in self.engine.eos_ids:
            text, stop = request.matcher.feed(request.decoder.flush())
            eos_text = self.engine.tokenizer.convert_ids_to_tokens(token)
            stop = stop or (eos_text if eos_text in request.params.stop else None)
            text += "" if stop else request.matcher.flush()
            self._finish(row, Chunk(text, 1, "stop", stop, **ids))
            return
        text, stop = request.matcher.feed(request.decoder.add([token]))
        if stop is not None:
            self._finish(row, Chunk(text, 1, "stop", stop=stop, **ids))
        elif request.produced >= request.params.max_tokens:
            tail, stop = request.matcher.feed(request.decoder.flush())
            tail += "" if stop else request.matcher.flush()
            reason = "stop" if stop else "length"
            self._finish(row, Chunk(text + tail, 1, reason, stop=stop, **ids))
        else:
            request.deliver(Chunk(text, 1, **ids))

    def _finish(self, row: int, chunk: Chunk) -> None:
        request = self.requests[row]
        request.deliver(chunk)
        request.cancelled.set()  # leaves the batch in drop_finished()

    def drop_finished(self) -> None:
        keep = [i for i, r in enumerate(self.requests) if not r.cancelled.is_set()]
        if len(keep) == len(self.requests):
            return
        if not keep:
            self.requests, self.last_tokens, self.cache, self.mask = [], [], None, None
            self.padded = False
            return
        self.requests = [self.requests[i] for i in keep]
        self.last_tokens = [self.last_tokens[i] for i in keep]
        self.cache.batch_select_indices(keep)
        self.mask = self.mask[keep]
        # Columns that are padding in every remaining row are dead weight: crop them.
        lead = int((self.mask.cumsum(dim=1) == 0).all(dim=0).sum())
        if lead:
            self.mask = self.mask[:, lead:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, lead:]
                layer.values = layer.values[:, :, lead:]
        self.padded = self.padded and not bool(self.mask.all())

    def fail_all(self, message: str) -> None:
        for request in self.requests:
            if not request.cancelled.is_set():
                request.deliver(Chunk("", 0, "error", error=message))
        self.requests, self.last_tokens, self.cache, self.mask = [], [], None, None
        self.padded = False


def _entropies(logits: Any, requests: list[_Request]) -> list[float | None]:
    """Per row, the entropy (nats) over the model's top-`top_logprobs` log-probabilities of
    the next token (the raw distribution, before temperature and filters, as vLLM reports
    logprobs), not renormalised; None for a request that did not ask. One host sync."""
    import torch

    wanted = [r.params.top_logprobs for r in requests]
    if not any(wanted):
        return [None] * len(requests)
    k = min(max(wanted), logits.shape[-1])
    top = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1).values
    rank = torch.arange(top.shape[1], device=top.device).unsqueeze(0)
    keep = rank < torch.tensor(wanted, device=top.device).unsqueeze(1)
    entropy = -(top.exp() * top).masked_fill(~keep, 0.0).sum(dim=-1)
    return [float(e) if k else None for e, k in zip(entropy.tolist(), wanted, strict=True)]


def _cache_of(output: Any) -> Any:
    """The KV cache a forward pass returned (`cache` in transformers >= 5.2x, else the old name)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _deliver(loop: asyncio.AbstractEventLoop, chunks: asyncio.Queue[Chunk], chunk: Chunk) -> None:
    """Hand a chunk to its stream's event loop (gone already when its run ended: dropped)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(chunks.put_nowait, chunk)

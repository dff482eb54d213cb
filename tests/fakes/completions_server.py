"""A small real OpenAI-compatible completions server on 127.0.0.1, backed by an Engine.

The tests serve the hf engine through this (tests/test_model_server.py runs the
real `transformers serve`): real sockets, real HTTP/1.1, real server-sent events, shaped
like vLLM's responses (`stop_reason`, `include_stop_str_in_output`, usage
stats, `owned_by` "vllm") or SGLang's (`matched_stop`, the stop string trimmed
unless `no_stop_trim`, `owned_by` "sglang"). A client that
disconnects aborts its request in the engine, as vLLM does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from submission.engines.base import Engine, SamplingParams

# A token's top log-probabilities for `logprobs: k` (k, seed, position) -> {token: logprob}.
TopLogprobs = Callable[[int, int, int], dict[str, float]]


def synthetic_top_logprobs(k: int, seed: int, position: int) -> dict[str, float]:
    """A stand-in's top-k: a made-up distribution (no model here), surer for some seeds, so
    the mean entropy differs between attempts. Not a model's numbers."""
    sharpness = 1.0 + (seed % 5) + (position % 3) / 3
    weights = [math.exp(-sharpness * rank) for rank in range(k)]
    total = sum(weights) * 1.25  # the top-k hold 80 % of the mass
    return {f"tok{rank}": math.log(w / total) for rank, w in enumerate(weights)}


@dataclass
class CompletionsServer:
    engine: Engine
    model_name: str = "tiny-qwen2"
    style: Literal["vllm", "sglang"] = "vllm"
    # Drop the connection after this many events of the next request (a crash mid-stream).
    drop_after_events: int | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnects: int = 0
    # GET /health answers 200 once this is true (a server still loading answers 503).
    healthy: bool = True
    top_logprobs: TopLogprobs = synthetic_top_logprobs
    # Called with each request's body as it arrives (before any answer: a client that has
    # its answer may stop the server at once), and after each completed request (a stand-in
    # may crash there).
    on_request: Callable[[dict[str, Any]], None] | None = None
    after_request: Callable[[int], None] | None = None
    port: int = 0
    _server: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> CompletionsServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, body = await _read_request(reader)
            if method == "GET" and path == "/health":
                status = 200 if self.healthy else 503
                await _respond_json(writer, status, {} if self.healthy else {"error": "loading"})
            elif method == "GET" and path == "/v1/models":
                card = {"id": self.model_name, "object": "model", "owned_by": self.style}
                data = {"object": "list", "data": [card]}
                await _respond_json(writer, 200, data)
            elif method == "POST" and path == "/v1/completions":
                await self._complete(reader, writer, json.loads(body))
            else:
                await _respond_json(writer, 404, {"error": f"no route {method} {path}"})
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _complete(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any]
    ) -> None:
        self.requests.append(request)
        if self.on_request is not None:
            self.on_request(request)
        if request.get("model") != self.model_name:
            await _respond_json(writer, 404, {"error": f"model {request.get('model')!r} not found"})
            return
        stop = request.get("stop") or ()
        params = SamplingParams(
            max_tokens=int(request["max_tokens"]),
            temperature=float(request.get("temperature", 1.0)),
            top_p=float(request.get("top_p", 1.0)),
            top_k=int(request.get("top_k", 0)),
            min_p=float(request.get("min_p", 0.0)),
            repetition_penalty=float(request.get("repetition_penalty", 1.0)),
            seed=request.get("seed"),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            stop_token_ids=tuple(request.get("stop_token_ids") or ()),
        )
        prompt = request["prompt"]
        if not isinstance(prompt, str) and not self.engine.token_prompts:
            await _respond_json(writer, 400, {"error": "this stand-in serves text prompts only"})
            return
        k = int(request.get("logprobs") or 0)
        return_ids = bool(request.get("return_token_ids"))
        keep_stop = bool(
            request.get("include_stop_str_in_output" if self.style == "vllm" else "no_stop_trim")
        )
        drop_after, self.drop_after_events = self.drop_after_events, None
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        client_gone = asyncio.ensure_future(reader.read(1))  # b"" when the client hangs up
        tokens = 0
        events = 0
        async with contextlib.aclosing(self.engine.stream(prompt, params)) as chunks:
            async for chunk in chunks:
                if client_gone.done():
                    self.disconnects += 1
                    return  # leaving the `async with` closes the engine stream: abort
                tokens += chunk.tokens
                choice: dict[str, Any] = {
                    "index": 0,
                    "text": chunk.text + ((chunk.stop or "") if keep_stop else ""),
                    "finish_reason": chunk.finish_reason,
                }
                if chunk.finish_reason is not None:
                    named = chunk.stop if chunk.stop_token is None else chunk.stop_token
                    choice["stop_reason" if self.style == "vllm" else "matched_stop"] = named
                if return_ids and self.style == "vllm":
                    choice["token_ids"] = list(chunk.token_ids)
                if k:
                    first = tokens - chunk.tokens
                    choice["logprobs"] = {
                        "top_logprobs": [
                            self.top_logprobs(k, params.seed or 0, first + i)
                            for i in range(chunk.tokens)
                        ]
                    }
                event = {"object": "text_completion", "model": self.model_name, "choices": [choice]}
                if self.style == "vllm":
                    event["usage"] = {"completion_tokens": tokens}
                writer.write(f"data: {json.dumps(event)}\n\n".encode())
                await writer.drain()
                events += 1
                if drop_after is not None and events >= drop_after:
                    writer.transport.abort()  # a crash: no [DONE], connection reset
                    return
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()
        client_gone.cancel()
        if self.after_request is not None:
            self.after_request(len(self.requests))


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, path, body


async def _respond_json(writer: asyncio.StreamWriter, status: int, data: Any) -> None:
    payload = json.dumps(data).encode()
    writer.write(
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    await writer.drain()

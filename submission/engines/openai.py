"""Any OpenAI-compatible completions server (trtllm-serve, vLLM, SGLang), over HTTP.

Streams `/v1/completions` with the raw rendered prompt (the harness renders
the chat template itself). Several base URLs: each request goes to the server
with the fewest requests in flight. Connection failures are retried with
exponential backoff, on whichever server is least busy then; a stream cut
after some text resumes from prompt + that text, so nothing is lost or
repeated. Closing the stream closes the HTTP response, which makes the
server abort the request.

Stop strings: the request asks the server to keep the stop string in the text
(`include_stop_str_in_output`, honoured by vLLM and trtllm-serve) so
`StopMatcher` can tell `</tool_call>` from end-of-text; where a server trims it
anyway, its `stop_reason` (vLLM, trtllm-serve) or `matched_stop` (SGLang) names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from submission.config import Config, OpenaiEngineConfig
from submission.engines.base import Chunk, EngineError, FinishReason, SamplingParams
from submission.engines.streamtext import StopMatcher

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "cancelled"}


class RetryableError(Exception):
    """A failure worth another try: no connection, a dropped stream, 429 or 5xx."""


class OpenaiEngine:
    """Streams completions from one or more OpenAI-compatible servers."""

    name = "openai"
    greedy = False
    token_prompts = False

    def __init__(self, config: OpenaiEngineConfig, transport: Any = None) -> None:
        """`transport`: an `httpx.AsyncBaseTransport` to use instead of the network (tests)."""
        if not config.base_urls:
            raise EngineError("openai: set engine.openai.base_urls")
        self.config = config
        self.base_urls = tuple(url.rstrip("/") for url in config.base_urls)
        self.model = config.model
        self.in_flight = dict.fromkeys(self.base_urls, 0)
        self.requests_sent = dict.fromkeys(self.base_urls, 0)
        self._client: Any = None
        self._transport = transport

    @classmethod
    def from_config(cls, config: Config) -> OpenaiEngine:
        return cls(config.engine.openai)

    async def start(self) -> None:
        if self._client is not None:
            return
        import httpx

        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                self.config.request_timeout_s, connect=self.config.connect_timeout_s
            ),
            headers={"Authorization": f"Bearer {self.config.api_key}"},
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            transport=self._transport,
        )
        if not self.model:
            self.model = await self._first_model()

    async def _first_model(self) -> str:
        """The model the first reachable server serves (GET /models), retried with backoff."""
        import httpx

        errors: list[str] = []
        for attempt in range(self.config.max_retries + 1):
            for url in self.base_urls:
                try:
                    response = await self._client.get(f"{url}/models")
                    response.raise_for_status()
                    return str(response.json()["data"][0]["id"])
                except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
                    errors.append(f"{url}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(self._backoff(attempt + 1))
        raise EngineError(
            f"openai: no server answered GET /models: {errors[-len(self.base_urls) :]}"
        )

    def _backoff(self, attempt: int) -> float:
        return min(MAX_BACKOFF_S, self.config.retry_backoff_s * 2 ** (attempt - 1))

    def _least_busy(self) -> str:
        # Ties go to the server that was sent the fewest requests so far.
        return min(self.base_urls, key=lambda url: (self.in_flight[url], self.requests_sent[url]))

    def body(self, prompt: str, params: SamplingParams, max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        # Extensions (vLLM, SGLang, trtllm-serve): sent only when they change something.
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if params.min_p > 0.0:
            body["min_p"] = params.min_p
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
        return body

    def stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        return self._stream(prompt, params)

    async def _stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        if self._client is None:
            yield Chunk("", 0, "error", error="openai: start() was not called")
            return
        matcher = StopMatcher(params.stop)
        produced_text: list[str] = []  # what this stream emitted: a resumed request continues it
        produced_tokens = 0
        failures = 0
        while True:
            url = self._least_busy()
            max_tokens = params.max_tokens - produced_tokens
            # A resumed request continues after everything generated, held-back text included.
            so_far = prompt + "".join(produced_text) + matcher.held
            body = self.body(so_far, params, max_tokens)
            self.in_flight[url] += 1
            self.requests_sent[url] += 1
            try:
                # Closing the request's generator closes its HTTP response: the server aborts.
                async with contextlib.aclosing(self._request(url, body, matcher)) as chunks:
                    async for chunk in chunks:
                        produced_tokens += chunk.tokens
                        produced_text.append(chunk.text)
                        failures = 0 if chunk.tokens else failures
                        yield chunk
                        if chunk.finish_reason is not None:
                            return
                raise RetryableError("stream ended without a finish reason")
            except RetryableError as exc:
                failures += 1
                if failures > self.config.max_retries or produced_tokens >= params.max_tokens:
                    yield Chunk(matcher.flush(), 0, "error", error=f"openai: {url}: {exc}")
                    return
                delay = self._backoff(failures)
                log.warning("openai: %s: %s; retry %d in %.1f s", url, exc, failures, delay)
                await asyncio.sleep(delay)
            finally:
                self.in_flight[url] -= 1

    async def _request(
        self, url: str, body: dict[str, Any], matcher: StopMatcher
    ) -> AsyncIterator[Chunk]:
        """One HTTP request's chunks; RetryableError when it is worth another try."""
        import httpx

        usage_tokens = 0
        try:
            async with self._client.stream("POST", f"{url}/completions", json=body) as response:
                if response.status_code == 429 or response.status_code >= 500:
                    raise RetryableError(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    detail = (await response.aread()).decode("utf-8", "replace")[:500]
                    yield Chunk(
                        "", 0, "error", error=f"openai: HTTP {response.status_code}: {detail}"
                    )
                    return
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        yield Chunk("", 0, "error", error=f"openai: {event['error']}")
                        return
                    usage = event.get("usage") or {}
                    tokens = 0
                    if "completion_tokens" in usage:
                        tokens = int(usage["completion_tokens"]) - usage_tokens
                        usage_tokens = int(usage["completion_tokens"])
                    choices = event.get("choices") or []
                    if not choices:
                        continue
                    choice = choices[0]
                    piece = choice.get("text") or ""
                    finish = choice.get("finish_reason")
                    if not usage and (piece or finish is None):
                        tokens = 1  # no usage stats: servers stream one event per decode step
                    text, stop = matcher.feed(piece)
                    if stop is not None:
                        yield Chunk(text, tokens, "stop", stop=stop)
                        return
                    if finish is not None:
                        server_stop = choice.get("stop_reason", choice.get("matched_stop"))
                        stop = server_stop if isinstance(server_stop, str) else None
                        reason = FINISH_REASONS.get(finish, "error")
                        tail = "" if stop is not None else matcher.flush()
                        error = None if reason != "error" else f"openai: finish_reason {finish}"
                        yield Chunk(text + tail, tokens, reason, stop=stop, error=error)
                        return
                    if text or tokens:
                        yield Chunk(text, tokens)
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}") from None
        except json.JSONDecodeError as exc:
            yield Chunk("", 0, "error", error=f"openai: bad event from {url}: {exc}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

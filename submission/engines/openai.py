"""Any OpenAI-compatible completions server (vLLM, SGLang, trtllm-serve, transformers serve).

Streams `/v1/completions` with the raw rendered prompt (the harness renders
the chat template itself), or its token ids where the server's dialect takes
them (vLLM). Several base URLs: each request goes to the server with the
fewest requests in flight. Connection failures are retried with exponential
backoff, on whichever server is least busy then; a stream cut after some text
resumes from prompt + that text (+ those ids), so nothing is lost or repeated.
Closing the stream closes the HTTP response, which makes the server abort the
request.

Each server has a dialect (`engine.openai.dialect`, or learnt from its GET
/models `owned_by`): the request fields beyond OpenAI's API go only to servers
that accept them (openai_dialects.py). A 4xx whose reason names some of them
(transformers serve: 422 "Unexpected fields in the request: {...}") is retried
once without them, and the server is not sent them again. Any other refusal
ends the stream in an error that carries the HTTP status and the server's
reason, which the attempt record and the report keep.

Stop strings: vLLM and trtllm-serve are asked to keep the stop string in the
text (`include_stop_str_in_output`), SGLang not to trim it (`no_stop_trim`), and
transformers serve keeps it anyway, so `StopMatcher` tells `</tool_call>` from
end-of-text; where a server trims it anyway, its `stop_reason` (vLLM,
trtllm-serve) or `matched_stop` (SGLang) names it. A stop token id
(`stop_token_ids`) is named by the same fields as an int (vLLM 0.11.2
`check_stop`): it becomes `Chunk.stop_token`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from submission.config import Config, OpenaiEngineConfig
from submission.engines.base import Chunk, EngineError, FinishReason, Prompt, SamplingParams
from submission.engines.openai_dialects import (
    EXTENSIONS,
    TOKEN_DIALECTS,
    Dialect,
    dialect_of,
    fields_named,
)
from submission.engines.streamtext import StopMatcher
from submission.model_server import ModelServer, ModelServerError, server_for

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
# After the finish event, how long to wait for a usage-only event (transformers serve sends
# the usage last, after the finish).
USAGE_GRACE_S = 2.0
FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "cancelled"}


class RetryableError(Exception):
    """A failure worth another try: no connection, a dropped stream, 429 or 5xx."""


class RefusedFields(Exception):
    """A 4xx whose reason names extension fields the request carried."""

    def __init__(self, fields: frozenset[str], reason: str) -> None:
        super().__init__(reason)
        self.fields = fields


@dataclass
class _Produced:
    """What one stream emitted so far: a resumed request continues after it."""

    text: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    tokens: int = 0


class OpenaiEngine:
    """Streams completions from one or more OpenAI-compatible servers."""

    name = "openai"
    greedy = False

    def __init__(
        self, config: OpenaiEngineConfig, transport: Any = None, server: ModelServer | None = None
    ) -> None:
        """`transport`: an `httpx.AsyncBaseTransport` to use instead of the network (tests).
        `server`: the model server this engine starts and stops (it is then the only one)."""
        if not config.base_urls and server is None:
            raise EngineError("openai: set engine.openai.base_urls")
        self.config = config
        self.server = server
        urls = (server.base_url,) if server is not None else config.base_urls
        self.base_urls = tuple(url.rstrip("/") for url in urls)
        self.model = config.model
        self.in_flight = dict.fromkeys(self.base_urls, 0)
        self.requests_sent = dict.fromkeys(self.base_urls, 0)
        # Each server's dialect, and the extension fields it is sent (a 4xx may narrow them).
        configured: Dialect = "plain" if config.dialect == "auto" else config.dialect
        self.dialects: dict[str, Dialect] = dict.fromkeys(self.base_urls, configured)
        self.extensions: dict[str, frozenset[str]] = dict.fromkeys(
            self.base_urls, EXTENSIONS[configured]
        )
        self._dialect_known: set[str] = set() if config.dialect == "auto" else set(self.base_urls)
        self._ignored_warned: set[str] = set()
        self._client: Any = None
        self._transport = transport

    @classmethod
    def from_config(cls, config: Config) -> OpenaiEngine:
        try:
            server = server_for(config)
        except ModelServerError as exc:
            raise EngineError(str(exc)) from None
        return cls(config.engine.openai, server=server)

    @property
    def token_prompts(self) -> bool:
        """Every server takes token-id prompts and streams the generated ids back (vLLM)."""
        return all(self.dialects[url] in TOKEN_DIALECTS for url in self.base_urls)

    async def start(self) -> None:
        if self._client is not None:
            return
        import httpx

        if self.server is not None:
            try:
                await self.server.start()
            except ModelServerError as exc:
                raise EngineError(f"openai: {exc}") from None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                self.config.request_timeout_s, connect=self.config.connect_timeout_s
            ),
            headers={"Authorization": f"Bearer {self.config.api_key}"},
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            transport=self._transport,
        )
        if not self.model:
            cards = await self._model_lists()
            self.model = str(next(iter(cards.values()))["id"])
            for url, card in cards.items():
                self._learn(url, card)
        else:
            for url in self.base_urls:  # one try each: a server still starting is asked later
                await self._ask_dialect(url)

    def _learn(self, url: str, card: Mapping[str, Any]) -> None:
        """Take `url`'s dialect from its GET /models card (with engine.openai.dialect = auto)."""
        if url in self._dialect_known:
            return
        self._dialect_known.add(url)
        if self.config.dialect == "auto":
            dialect = dialect_of(card.get("owned_by"))
            self.dialects[url] = dialect
            self.extensions[url] = EXTENSIONS[dialect]
            log.info("openai: %s speaks the %s dialect", url, dialect)

    async def _ask_dialect(self, url: str) -> None:
        """One GET /models to learn `url`'s dialect; a server that does not answer is asked again
        before its next request."""
        import httpx

        if url in self._dialect_known:
            return
        try:
            response = await self._client.get(f"{url}/models")
            response.raise_for_status()
            self._learn(url, response.json()["data"][0])
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            log.info("openai: %s: no model list yet (%s): dialect not known", url, exc)

    async def _model_lists(self) -> dict[str, Mapping[str, Any]]:
        """Each reachable server's first GET /models card, tried until one answers (backoff)."""
        import httpx

        errors: list[str] = []
        for attempt in range(self.config.max_retries + 1):
            cards: dict[str, Mapping[str, Any]] = {}
            for url in self.base_urls:
                try:
                    response = await self._client.get(f"{url}/models")
                    response.raise_for_status()
                    cards[url] = response.json()["data"][0]
                except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
                    errors.append(f"{url}: {type(exc).__name__}: {exc}")
            if cards:
                return cards
            await asyncio.sleep(self._backoff(attempt + 1))
        raise EngineError(
            f"openai: no server answered GET /models: {errors[-len(self.base_urls) :]}"
        )

    def _backoff(self, attempt: int) -> float:
        return min(MAX_BACKOFF_S, self.config.retry_backoff_s * 2 ** (attempt - 1))

    def _least_busy(self) -> str:
        # Ties go to the server that was sent the fewest requests so far.
        return min(self.base_urls, key=lambda url: (self.in_flight[url], self.requests_sent[url]))

    def body(
        self, url: str, prompt: Prompt, params: SamplingParams, max_tokens: int
    ) -> dict[str, Any]:
        """The request for `url`'s dialect; raises EngineError for what the server cannot do."""
        accepted = self.extensions[url]
        tokens = not isinstance(prompt, str)
        if tokens and self.dialects[url] not in TOKEN_DIALECTS:
            raise EngineError(
                f"openai: {url} ({self.dialects[url]} dialect) takes no token-id prompt"
            )
        if params.stop_token_ids and "stop_token_ids" not in accepted:
            raise EngineError(
                f"openai: {url} ({self.dialects[url]} dialect) cannot stop at stop token ids"
            )
        usage = {"include_usage": True}
        if "continuous_usage_stats" in accepted:
            usage["continuous_usage_stats"] = True
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": list(prompt) if tokens else prompt,
            "max_tokens": max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": usage,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.top_logprobs > 0:
            body["logprobs"] = params.top_logprobs
        extensions: dict[str, Any] = {
            # Keep a stop string in the text (StopMatcher cuts it); a stop token's text stays
            # out unless a stop string asks for this.
            "include_stop_str_in_output": bool(params.stop),
            "no_stop_trim": bool(params.stop),
            "skip_special_tokens": False,
            "stop_token_ids": list(params.stop_token_ids) or None,
            "return_token_ids": True,
        }
        # Sampling knobs go only when they change something.
        knobs = {"top_k": params.top_k > 0, "min_p": params.min_p > 0.0}
        knobs["repetition_penalty"] = params.repetition_penalty != 1.0
        for name, value in extensions.items():
            if name in accepted and value is not None:
                body[name] = value
        for name, wanted in knobs.items():
            if wanted and name in accepted:
                body[name] = getattr(params, name)
            elif wanted and name not in self._ignored_warned:
                self._ignored_warned.add(name)
                log.warning("openai: %s does not take %s: it is ignored", url, name)
        return body

    def ignored_sampling(self, url: str, params: SamplingParams) -> str:
        """The effective sampling note (attempt log `sampling`) where knobs were dropped."""
        accepted = self.extensions[url]
        dropped = [
            f"{name}={getattr(params, name):g}"
            for name, default in (("top_k", 0), ("min_p", 0.0), ("repetition_penalty", 1.0))
            if getattr(params, name) != default and name not in accepted
        ]
        return f"ignored {' '.join(dropped)}" if dropped else ""

    def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Chunk]:
        return self._stream(prompt, params)

    async def _stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Chunk]:
        if self._client is None:
            yield Chunk("", 0, "error", error="openai: start() was not called")
            return
        matcher = StopMatcher(params.stop)
        produced = _Produced()
        failures = 0
        refused_once = False
        first = True
        while True:
            url = self._least_busy()
            await self._ask_dialect(url)
            try:
                resumed = self._resumed(prompt, produced, matcher)
                body = self.body(url, resumed, params, params.max_tokens - produced.tokens)
            except EngineError as exc:
                yield Chunk(matcher.flush(), 0, "error", error=str(exc))
                return
            self.in_flight[url] += 1
            self.requests_sent[url] += 1
            try:
                # Closing the request's generator closes its HTTP response: the server aborts.
                async with contextlib.aclosing(self._request(url, body, matcher)) as chunks:
                    async for chunk in chunks:
                        if first and (note := self.ignored_sampling(url, params)):
                            chunk = replace(chunk, meta={**chunk.meta, "sampling": note})
                        first = False
                        produced.tokens += chunk.tokens
                        produced.text.append(chunk.text)
                        produced.ids += chunk.token_ids
                        failures = 0 if chunk.tokens else failures
                        yield chunk
                        if chunk.finish_reason is not None:
                            return
                raise RetryableError("stream ended without a finish reason")
            except RefusedFields as exc:
                narrowed = self.extensions[url] - exc.fields
                log.warning(
                    "openai: %s refused %s (%s); %s without them",
                    url,
                    ", ".join(sorted(exc.fields)),
                    exc,
                    "retrying" if not refused_once else "not retrying",
                )
                self.extensions[url] = narrowed
                if refused_once:
                    yield Chunk(matcher.flush(), 0, "error", error=f"openai: {url}: {exc}")
                    return
                refused_once = True
            except RetryableError as exc:
                failures += 1
                if failures > self.config.max_retries or produced.tokens >= params.max_tokens:
                    yield Chunk(matcher.flush(), 0, "error", error=f"openai: {url}: {exc}")
                    return
                delay = self._backoff(failures)
                log.warning("openai: %s: %s; retry %d in %.1f s", url, exc, failures, delay)
                await asyncio.sleep(delay)
            finally:
                self.in_flight[url] -= 1

    @staticmethod
    def _resumed(prompt: Prompt, produced: _Produced, matcher: StopMatcher) -> Prompt:
        """The prompt a resumed request continues: everything generated, held-back text included."""
        if isinstance(prompt, str):
            return prompt + "".join(produced.text) + matcher.held
        return [*prompt, *produced.ids]

    async def _request(
        self, url: str, body: dict[str, Any], matcher: StopMatcher
    ) -> AsyncIterator[Chunk]:
        """One HTTP request's chunks; RetryableError when it is worth another try."""
        import httpx

        usage_tokens = 0  # the server's count so far (usage stats)
        counted = 0  # the tokens this request's chunks carried so far
        try:
            async with self._client.stream("POST", f"{url}/completions", json=body) as response:
                if response.status_code == 429 or response.status_code >= 500:
                    raise RetryableError(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    detail = (await response.aread()).decode("utf-8", "replace")[:500]
                    sent = frozenset(body) | frozenset(body.get("stream_options", {}))
                    named = fields_named(detail, sent & self.extensions[url])
                    reason = f"HTTP {response.status_code}: {detail}"
                    if named:
                        raise RefusedFields(named, reason)
                    log.warning("openai: %s refused the request: %s", url, reason)
                    yield Chunk("", 0, "error", error=f"openai: {reason}")
                    return
                lines = response.aiter_lines()
                async for line in lines:
                    event = _event(line)
                    if event is None:
                        continue
                    if event == "[DONE]":
                        return
                    if "error" in event:
                        log.warning("openai: %s: error event: %s", url, event["error"])
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
                    ids = tuple(int(i) for i in choice.get("token_ids") or ())
                    if ids:
                        tokens = len(ids)
                    elif not usage and (piece or finish is None):
                        tokens = 1  # no usage stats: servers stream one event per decode step
                    entropies = _entropies((choice.get("logprobs") or {}).get("top_logprobs"))
                    text, stop = matcher.feed(piece)
                    if stop is not None:  # the stop string: the server may go on, we don't
                        yield Chunk(
                            text,
                            tokens,
                            "stop",
                            stop=stop,
                            token_ids=ids,
                            token_entropies=entropies,
                        )
                        return
                    if finish is not None:
                        if not usage and not ids:
                            tokens += await self._late_usage(lines, counted + tokens)
                        yield self._final(choice, finish, text, tokens, ids, entropies, matcher)
                        return
                    if text or tokens:
                        counted += tokens
                        yield Chunk(text, tokens, token_ids=ids, token_entropies=entropies)
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}") from None
        except json.JSONDecodeError as exc:
            yield Chunk("", 0, "error", error=f"openai: bad event from {url}: {exc}")

    @staticmethod
    async def _late_usage(lines: AsyncIterator[str], counted: int) -> int:
        """Tokens a usage-only event after the finish adds to those counted (0 when none comes)."""
        with contextlib.suppress(TimeoutError, StopAsyncIteration, json.JSONDecodeError):
            while True:
                event = _event(await asyncio.wait_for(anext(lines), USAGE_GRACE_S))
                if event == "[DONE]":
                    return 0
                if event is not None and "completion_tokens" in (event.get("usage") or {}):
                    # Each event without usage counted one token; the usage is the truth.
                    return int(event["usage"]["completion_tokens"]) - counted
        return 0

    @staticmethod
    def _final(
        choice: Mapping[str, Any],
        finish: str,
        text: str,
        tokens: int,
        ids: tuple[int, ...],
        entropies: tuple[float, ...],
        matcher: StopMatcher,
    ) -> Chunk:
        """The last chunk: why the server stopped, the stop string or stop token it names."""
        server_stop = choice.get("stop_reason", choice.get("matched_stop"))
        stop = server_stop if isinstance(server_stop, str) else None
        stop_token = server_stop if isinstance(server_stop, int) and finish == "stop" else None
        if stop_token is not None and ids and ids[-1] != stop_token:
            ids = (*ids, stop_token)  # the seam: the stop token's id ends the ids
        reason = FINISH_REASONS.get(finish, "error")
        tail = "" if stop is not None else matcher.flush()
        error = None if reason != "error" else f"openai: finish_reason {finish}"
        return Chunk(
            text + tail,
            tokens,
            reason,
            stop=stop,
            stop_token=stop_token,
            error=error,
            token_ids=ids,
            token_entropies=entropies,
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        if self.server is not None:
            await self.server.stop()


def _event(line: str) -> Any:
    """A server-sent event's data: a dict, "[DONE]", or None for other lines."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    return data if data == "[DONE]" else json.loads(data)


def _entropies(top_logprobs: Sequence[Mapping[str, float] | None] | None) -> tuple[float, ...]:
    """Per token, -sum p ln p over its top log-probabilities, as returned (not renormalised:
    the AIMO-3 anchor's `_compute_mean_entropy` does the same, in bits)."""
    if not top_logprobs:
        return ()
    return tuple(
        -sum(math.exp(lp) * lp for lp in (top or {}).values() if lp > -math.inf)
        for top in top_logprobs
    )

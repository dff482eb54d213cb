"""submission.engines.openai: through an injected httpx transport, and against a real server.

The transport tests (no torch) script the server's answers: 429, 503, a stream
dropped mid-way, bad JSON. The text they stream is a recorded ToRA generation
(the embedded GSM8K sample), cut into events as a server would send them. The
real-server tests run a completions server on 127.0.0.1 (tests/fakes) in front
of the hf engine, when torch is present.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from submission.config import PACKAGE_DATA, load_config
from submission.engines.base import Chunk, EngineError, SamplingParams
from submission.engines.openai import OpenaiEngine
from submission.standin import build_random_qwen2
from tests.fakes.completions_server import CompletionsServer
from tests.helpers import cached, collect, text_of

PROMPT = "<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model_dir(request: pytest.FixtureRequest) -> Path:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    torch.set_num_threads(1)
    return cached(request.config.cache.mkdir("qwen2-tiny-random-v2"), build_random_qwen2)


@pytest.fixture
async def hf_engine(model_dir: Path):
    from submission.engines.hf import HfEngine

    config = load_config("aimo3", None, [f"engine.hf.model={model_dir}", "engine.hf.device=cpu"])
    engine = HfEngine.from_config(config)
    await engine.start()
    yield engine
    await engine.close()


def dead_url() -> str:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def client(*urls: str, model: str = "", retries: int = 3) -> OpenaiEngine:
    sets = [
        f"engine.openai.base_urls={','.join(urls)}",
        f"engine.openai.max_retries={retries}",
        "engine.openai.retry_backoff_s=0.01",
        "engine.openai.connect_timeout_s=2",
        "engine.openai.request_timeout_s=60",
    ]
    if model:
        sets.append(f"engine.openai.model={model}")
    return OpenaiEngine.from_config(load_config("aimo3", None, sets))


@pytest.mark.parametrize("style", ["vllm", "sglang"])
async def test_streams_the_same_text_as_the_engine_behind_it(hf_engine, style):
    server = await CompletionsServer(hf_engine, style=style).start()
    engine = client(server.base_url)
    try:
        await engine.start()
        assert engine.model == server.model_name  # discovered through GET /models
        greedy = SamplingParams(max_tokens=24, temperature=0.0, seed=3)
        direct = text_of(await collect(hf_engine, PROMPT, greedy))
        served = await collect(engine, PROMPT, greedy)
        assert text_of(served) == direct
        assert served[-1].finish_reason == "length"
        tokens = sum(c.tokens for c in served)
        # vLLM reports usage; without it (SGLang) each event counts one token, a bare end none.
        assert tokens == 24 if style == "vllm" else 23 <= tokens <= 24
        sent = server.requests[0]
        assert (sent["prompt"], sent["max_tokens"], sent["seed"], sent["stream"]) == (
            PROMPT,
            24,
            3,
            True,
        )

        stop = direct[10:13]
        params = SamplingParams(max_tokens=24, temperature=0.0, stop=(stop, "<|im_end|>"))
        stopped = await collect(engine, PROMPT, params)
        assert text_of(stopped) == direct[: direct.index(stop)]
        assert (stopped[-1].finish_reason, stopped[-1].stop) == ("stop", stop)
    finally:
        await engine.close()
        await server.stop()


async def test_least_busy_dispatch_spreads_streams(hf_engine):
    servers = [await CompletionsServer(hf_engine).start() for _ in range(2)]
    engine = client(*(s.base_url for s in servers), model="tiny-qwen2")
    try:
        await engine.start()
        params = SamplingParams(max_tokens=16, temperature=1.0)
        results = await asyncio.gather(*(collect(engine, PROMPT, params) for _ in range(4)))
        assert all(r[-1].finish_reason == "length" for r in results)
        assert [len(s.requests) for s in servers] == [2, 2]
    finally:
        await engine.close()
        for server in servers:
            await server.stop()


async def test_connection_errors_are_retried_on_another_server(hf_engine):
    server = await CompletionsServer(hf_engine).start()
    dead = dead_url()
    engine = client(dead, server.base_url, model="tiny-qwen2")
    try:
        await engine.start()
        chunks = await collect(engine, PROMPT, SamplingParams(max_tokens=8, temperature=0.0))
        assert chunks[-1].finish_reason == "length"
        assert engine.requests_sent[dead] == 1  # tried first, refused
        assert len(server.requests) == 1
    finally:
        await engine.close()
        await server.stop()


async def test_no_server_at_all_ends_in_error_not_an_exception():
    engine = client(dead_url(), model="tiny-qwen2", retries=2)
    await engine.start()
    chunks = await collect(engine, PROMPT, SamplingParams(max_tokens=8))
    assert [c.finish_reason for c in chunks] == ["error"]
    assert "ConnectError" in (chunks[0].error or "")
    await engine.close()

    unknown_model = client(dead_url(), retries=1)
    with pytest.raises(EngineError, match="GET /models"):
        await unknown_model.start()
    await unknown_model.close()


async def test_a_stream_cut_mid_way_resumes_after_its_text(hf_engine):
    server = await CompletionsServer(hf_engine, drop_after_events=5).start()
    engine = client(server.base_url, model="tiny-qwen2")
    try:
        await engine.start()
        chunks = await collect(engine, PROMPT, SamplingParams(max_tokens=20, temperature=0.0))
        assert chunks[-1].finish_reason == "length"
        assert sum(c.tokens for c in chunks) == 20
        _, resumed = server.requests
        before_cut = text_of(chunks[:5])
        assert resumed["prompt"] == PROMPT + before_cut
        assert resumed["max_tokens"] == 20 - sum(c.tokens for c in chunks[:5])
    finally:
        await engine.close()
        await server.stop()


async def test_closing_the_stream_aborts_the_request_on_the_server(hf_engine):
    server = await CompletionsServer(hf_engine).start()
    engine = client(server.base_url, model="tiny-qwen2")
    try:
        await engine.start()
        stream = engine.stream(PROMPT, SamplingParams(max_tokens=100_000, temperature=0.0))
        assert (await anext(stream)).finish_reason is None
        await stream.aclose()
        for _ in range(300):  # bounded wait for the server to notice and the engine to drop it
            if server.disconnects == 1 and hf_engine.active_requests == 0:
                break
            await asyncio.sleep(0.01)
        assert server.disconnects == 1
        assert hf_engine.active_requests == 0
        assert engine.in_flight[server.base_url] == 0
    finally:
        await engine.close()
        await server.stop()


# -- through an injected transport: the server's answers scripted, no torch ----------------

# A recorded ToRA-70B generation (embedded GSM8K sample, problem 0), cut into 8-character
# events as a server streams them.
RECORDED = json.loads(
    (PACKAGE_DATA / "tora70b_gsm8k_first250.jsonl").open(encoding="utf-8").readline()
)["code"][0]
PIECES = [RECORDED[i : i + 8] for i in range(0, 8 * 30, 8)]


def sse(pieces: list[str], finish: str | None = "length") -> list[bytes]:
    """vLLM-style events: one piece each with cumulative usage, the last with `finish`."""
    events = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        event = {
            "choices": [{"text": piece, "finish_reason": finish if last else None}],
            "usage": {"completion_tokens": i + 1},
        }
        events.append(f"data: {json.dumps(event)}\n\n".encode())
    return [*events, b"data: [DONE]\n\n"] if finish else events


async def body_of(events: list[bytes], then: Exception | None = None) -> AsyncIterator[bytes]:
    for event in events:
        yield event
    if then is not None:
        raise then


Answer = Callable[[dict], httpx.Response]


def scripted(answers: list[Answer], sent: list[dict]) -> httpx.MockTransport:
    """Answers POST /completions with the next scripted answer; GET /models names a model."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "recorded"}]})
        body = json.loads(request.content)
        sent.append(body)
        return answers[len(sent) - 1](body)

    return httpx.MockTransport(handle)


def status(code: int) -> Answer:
    return lambda body: httpx.Response(code, text=f"status {code}")


def streaming(pieces: list[str], then: Exception | None = None, finish: str = "length") -> Answer:
    events = sse(pieces, finish if then is None else None)
    return lambda body: httpx.Response(200, content=body_of(events, then))


def mocked(transport: httpx.MockTransport, retries: int = 3) -> OpenaiEngine:
    config = load_config(
        "aimo3",
        None,
        [
            "engine.openai.base_urls=http://server-a/v1",
            f"engine.openai.max_retries={retries}",
            "engine.openai.retry_backoff_s=0.001",
        ],
    )
    return OpenaiEngine(config.engine.openai, transport=transport)


async def run_mocked(answers: list[Answer], retries: int = 3) -> tuple[list[Chunk], list[dict]]:
    sent: list[dict] = []
    engine = mocked(scripted(answers, sent), retries)
    await engine.start()
    try:
        params = SamplingParams(max_tokens=len(PIECES), seed=7)
        return await collect(engine, PROMPT, params), sent
    finally:
        await engine.close()


async def test_429_and_503_are_retried_then_the_text_streams_whole() -> None:
    chunks, sent = await run_mocked([status(429), status(503), streaming(PIECES)])
    assert len(sent) == 3
    assert text_of(chunks) == "".join(PIECES)
    assert sum(c.tokens for c in chunks) == len(PIECES)
    assert chunks[-1].finish_reason == "length"
    assert all(body["prompt"] == PROMPT and body["seed"] == 7 for body in sent)


async def test_a_server_that_stays_down_ends_the_stream_in_error_after_the_retries() -> None:
    chunks, sent = await run_mocked([status(503)] * 3, retries=2)
    assert len(sent) == 3  # the first try and two retries
    assert [c.finish_reason for c in chunks] == ["error"]
    assert "HTTP 503" in (chunks[0].error or "")


async def test_a_client_error_is_not_retried() -> None:
    chunks, sent = await run_mocked([status(400)])
    assert len(sent) == 1
    assert [c.finish_reason for c in chunks] == ["error"]
    assert "HTTP 400: status 400" in (chunks[0].error or "")


async def test_a_dropped_stream_resumes_after_the_text_it_gave() -> None:
    cut = 5
    answers = [
        streaming(PIECES[:cut], then=httpx.ReadError("connection dropped")),
        streaming(PIECES[cut:]),
    ]
    chunks, sent = await run_mocked(answers)
    assert text_of(chunks) == "".join(PIECES)  # nothing lost, nothing repeated
    assert sum(c.tokens for c in chunks) == len(PIECES)
    assert chunks[-1].finish_reason == "length"
    assert sent[1]["prompt"] == PROMPT + "".join(PIECES[:cut])
    assert sent[1]["max_tokens"] == len(PIECES) - cut


async def test_bad_json_ends_the_stream_in_error_keeping_the_text_before_it() -> None:
    good = sse(PIECES[:3], finish=None)

    def broken(body: dict) -> httpx.Response:
        return httpx.Response(200, content=body_of([*good, b"data: {not json\n\n"]))

    chunks, sent = await run_mocked([broken])
    assert len(sent) == 1  # a server that speaks nonsense is not asked again
    assert text_of(chunks) == "".join(PIECES[:3])
    assert chunks[-1].finish_reason == "error"
    assert "bad event" in (chunks[-1].error or "")

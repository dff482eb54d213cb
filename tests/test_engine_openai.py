"""submission.engines.openai against a real HTTP server on 127.0.0.1 (tests/fakes), hf-backed."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from submission.config import load_config
from submission.engines.base import Chunk, EngineError, SamplingParams
from submission.engines.openai import OpenaiEngine
from tests.fakes.completions_server import CompletionsServer
from tests.fakes.qwen_tiny import build_random_qwen2, cached

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("httpx")
from submission.engines.hf import HfEngine  # noqa: E402

PROMPT = "<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model_dir(request: pytest.FixtureRequest) -> Path:
    torch.set_num_threads(1)
    return cached(request.config.cache.mkdir("qwen2-tiny-random-v2"), build_random_qwen2)


@pytest.fixture
async def hf_engine(model_dir: Path):
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


async def collect(engine, params: SamplingParams, prompt: str = PROMPT) -> list[Chunk]:
    chunks = []
    async for chunk in engine.stream(prompt, params):
        chunks.append(chunk)
        assert len(chunks) <= params.max_tokens + 2
    return chunks


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


@pytest.mark.parametrize("style", ["vllm", "sglang"])
async def test_streams_the_same_text_as_the_engine_behind_it(hf_engine, style):
    server = await CompletionsServer(hf_engine, style=style).start()
    engine = client(server.base_url)
    try:
        await engine.start()
        assert engine.model == server.model_name  # discovered through GET /models
        greedy = SamplingParams(max_tokens=24, temperature=0.0, seed=3)
        direct = text_of(await collect(hf_engine, greedy))
        served = await collect(engine, greedy)
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
        stopped = await collect(engine, params)
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
        results = await asyncio.gather(*(collect(engine, params) for _ in range(4)))
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
        chunks = await collect(engine, SamplingParams(max_tokens=8, temperature=0.0))
        assert chunks[-1].finish_reason == "length"
        assert engine.requests_sent[dead] == 1  # tried first, refused
        assert len(server.requests) == 1
    finally:
        await engine.close()
        await server.stop()


async def test_no_server_at_all_ends_in_error_not_an_exception():
    engine = client(dead_url(), model="tiny-qwen2", retries=2)
    await engine.start()
    chunks = await collect(engine, SamplingParams(max_tokens=8))
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
        chunks = await collect(engine, SamplingParams(max_tokens=20, temperature=0.0))
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

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
import logging
import math
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
    return cached(request, "qwen2-tiny-random-v2", build_random_qwen2)


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


async def test_the_kernels_logging_keeps_httpx_from_logging_each_request() -> None:
    from submission.kernel import configure_logging

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.name)

    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    saved = root.handlers[:], root.level, httpx_logger.level
    seen: list[str] = []
    try:
        root.setLevel(logging.INFO)
        httpx_logger.setLevel(logging.NOTSET)  # as before any setup (earlier tests ran main())
        root.addHandler(Keep())
        await run_mocked([streaming(PIECES)])
        assert "httpx" in seen  # without the setup: one INFO line per request
        configure_logging()
        root.addHandler(Keep())
        seen.clear()
        await run_mocked([streaming(PIECES)])
        assert "httpx" not in seen
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        httpx_logger.setLevel(saved[2])


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


# -- dialects: what each server accepts (submission/engines/openai_dialects.py) ------------

# transformers serve 5.25's /v1/completions accepts these body keys (its
# TransformersTextCompletionCreateParams: OpenAI's CompletionCreateParamsBase + generation_config,
# seed, stream); any other key is a 422 naming the unexpected ones
# (transformers/cli/serving/utils.py BaseHandler._validate_request).
TRANSFORMERS_SERVE_FIELDS = frozenset(
    {
        "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
        "max_tokens", "n", "presence_penalty", "seed", "stop", "stream_options", "suffix",
        "temperature", "top_p", "user", "stream", "generation_config",
    }
)  # fmt: skip


def transformers_serve(sent: list[dict], pieces: list[str] = PIECES) -> httpx.MockTransport:
    """A contract fake of `transformers serve` 5.25's completions: 422 on unknown fields,
    400 on a non-string prompt, the stop string kept in the text, usage only at the end."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            model = {"id": "/models/tiny", "object": "model", "owned_by": "local"}
            return httpx.Response(200, json={"object": "list", "data": [model]})
        body = json.loads(request.content)
        sent.append(body)
        unexpected = set(body) - TRANSFORMERS_SERVE_FIELDS
        if unexpected:
            detail = f"Unexpected fields in the request: {unexpected}"
            return httpx.Response(422, json={"detail": detail})
        if not isinstance(body["prompt"], str):
            return httpx.Response(400, json={"detail": "prompt must be a string."})
        events = [
            {"choices": [{"index": 0, "text": piece}], "object": "text_completion"}
            for piece in pieces
        ]
        events.append({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
        events.append({"choices": [], "usage": {"completion_tokens": 3 * len(pieces)}})
        lines = [f"data: {json.dumps(e)}\n\n".encode() for e in events]
        return httpx.Response(200, content=body_of(lines))

    return httpx.MockTransport(handle)


def engine_on(transport: httpx.MockTransport, *sets: str) -> OpenaiEngine:
    config = load_config(
        "aimo3",
        None,
        [
            "engine.openai.base_urls=http://server-a/v1",
            "engine.openai.max_retries=1",
            "engine.openai.retry_backoff_s=0.001",
            *sets,
        ],
    )
    return OpenaiEngine(config.engine.openai, transport=transport)


async def test_transformers_serve_is_sent_no_vllm_fields_and_streams() -> None:
    sent: list[dict] = []
    engine = engine_on(transformers_serve(sent))
    await engine.start()
    try:
        stop = "".join(PIECES)[50:60]
        chunks = await collect(engine, PROMPT, SamplingParams(max_tokens=500, stop=(stop,), seed=4))
    finally:
        await engine.close()
    assert chunks[-1].error is None
    assert (chunks[-1].finish_reason, chunks[-1].stop) == ("stop", stop)
    assert text_of(chunks) == "".join(PIECES)[:50]
    assert len(sent) == 1 and set(sent[0]) <= TRANSFORMERS_SERVE_FIELDS
    assert sent[0]["seed"] == 4


async def test_a_422_naming_fields_is_retried_once_without_them_and_remembered() -> None:
    sent: list[dict] = []
    # Told it is vLLM, the engine sends vLLM's fields; the server names them in its 422.
    engine = engine_on(transformers_serve(sent), "engine.openai.dialect=vllm")
    await engine.start()
    try:
        params = SamplingParams(max_tokens=500, seed=1)
        first = await collect(engine, PROMPT, params)
        second = await collect(engine, PROMPT, params)
    finally:
        await engine.close()
    assert first[-1].finish_reason == second[-1].finish_reason == "stop"
    assert text_of(first) == text_of(second) == "".join(PIECES)
    assert "skip_special_tokens" in sent[0]
    assert [set(body) <= TRANSFORMERS_SERVE_FIELDS for body in sent] == [False, True, True]


async def test_a_refusal_ends_in_error_with_the_status_and_the_servers_reason(caplog) -> None:
    sent: list[dict] = []
    engine = engine_on(transformers_serve(sent))
    await engine.start()
    try:
        chunks = await collect(engine, [1, 2, 3], SamplingParams(max_tokens=8))
        assert engine.token_prompts is False
        plain_text = await collect(
            engine, PROMPT, SamplingParams(max_tokens=8, stop_token_ids=(7,))
        )
    finally:
        await engine.close()
    assert [c.finish_reason for c in chunks] == ["error"]
    assert "token-id prompt" in (chunks[0].error or "")
    assert sent == []  # refused before a request a plain server would reject
    assert plain_text[-1].finish_reason == "error"
    assert "stop token ids" in (plain_text[-1].error or "")


async def test_an_unnamed_client_error_carries_status_and_reason_to_the_log(caplog) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"data": [{"id": "m", "owned_by": "vllm"}]})
        return httpx.Response(400, json={"detail": "This model's maximum context length is 8"})

    engine = engine_on(httpx.MockTransport(handle))
    await engine.start()
    try:
        chunks = await collect(engine, PROMPT, SamplingParams(max_tokens=8))
    finally:
        await engine.close()
    assert chunks[-1].finish_reason == "error"
    assert "HTTP 400" in (chunks[-1].error or "")
    assert "maximum context length is 8" in (chunks[-1].error or "")
    assert any("HTTP 400" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("owned_by", "dialect", "fields"),
    [
        ("vllm", "vllm", {"include_stop_str_in_output", "skip_special_tokens", "return_token_ids"}),
        ("sglang", "sglang", {"no_stop_trim", "skip_special_tokens"}),
        ("tensorrt_llm", "trtllm", {"include_stop_str_in_output", "skip_special_tokens"}),
        ("local", "plain", set()),
        (None, "plain", set()),
    ],
)
async def test_the_dialect_is_learnt_from_the_servers_model_list(owned_by, dialect, fields) -> None:
    sent: list[dict] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            card = {"id": "m"} | ({"owned_by": owned_by} if owned_by else {})
            return httpx.Response(200, json={"data": [card]})
        sent.append(json.loads(request.content))
        return streaming(PIECES[:2])(sent[-1])

    engine = engine_on(httpx.MockTransport(handle))
    await engine.start()
    try:
        chunks = await collect(engine, PROMPT, SamplingParams(max_tokens=2, stop=("</x>",)))
    finally:
        await engine.close()
    assert chunks[-1].finish_reason == "length"
    assert engine.dialects["http://server-a/v1"] == dialect
    extensions = {"include_stop_str_in_output", "skip_special_tokens", "return_token_ids"}
    assert (set(sent[0]) & (extensions | {"no_stop_trim"})) == fields
    assert engine.token_prompts is (dialect == "vllm")


# -- token ids, stop tokens and logprobs (vLLM 0.11.2's streamed completion) --------------

# Harmony's stop tokens (<|return|>, <|call|>): openai-harmony's
# stop_tokens_for_assistant_actions(). The generated ids below are opaque to the engine.
RETURN, CALL = 200002, 200012
TOKEN_PROMPT = [200006, 1428, 200008, 3085, 200007, 200006, 173781]


def vllm_token_events(pieces: list[str], stop_token: int, top: int = 0) -> list[bytes]:
    """vLLM's stream with return_token_ids (one id per piece, the stop id in the last event)
    and, with `top`, logprobs.top_logprobs (a dict per token)."""
    events = []
    next_id = 1000
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        ids = [next_id, stop_token] if last else [next_id]
        next_id += 1
        choice: dict = {"index": 0, "text": piece, "token_ids": ids, "finish_reason": None}
        if last:
            choice |= {"finish_reason": "stop", "stop_reason": stop_token}
        if top:
            choice["logprobs"] = {
                "top_logprobs": [
                    {f"t{k}": math.log((k + 1) / (top * (top + 1) / 2)) for k in range(top)}
                    for _ in ids
                ]
            }
        events.append(choice)
    return [
        *(
            f"data: {json.dumps({'choices': [c], 'usage': {'completion_tokens': n}})}\n\n".encode()
            for n, c in enumerate(events, start=1)
        ),
        b"data: [DONE]\n\n",
    ]


def vllm_server(sent: list[dict], events: list[bytes]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"data": [{"id": "gpt-oss", "owned_by": "vllm"}]})
        sent.append(json.loads(request.content))
        return httpx.Response(200, content=body_of(events))

    return httpx.MockTransport(handle)


async def test_a_token_prompt_stops_at_a_stop_token_and_reports_the_ids() -> None:
    sent: list[dict] = []
    engine = engine_on(vllm_server(sent, vllm_token_events(PIECES[:4], CALL)))
    await engine.start()
    try:
        assert engine.token_prompts is True
        params = SamplingParams(max_tokens=100, seed=9, stop_token_ids=(RETURN, CALL))
        chunks = await collect(engine, TOKEN_PROMPT, params)
    finally:
        await engine.close()
    body = sent[0]
    assert body["prompt"] == TOKEN_PROMPT
    assert body["stop_token_ids"] == [RETURN, CALL]
    assert body["return_token_ids"] is True and body["seed"] == 9
    assert (chunks[-1].finish_reason, chunks[-1].stop_token, chunks[-1].stop) == (
        "stop",
        CALL,
        None,
    )
    ids = [i for c in chunks for i in c.token_ids]
    assert ids == [1000, 1001, 1002, 1003, CALL]
    assert text_of(chunks) == "".join(PIECES[:4])
    assert sum(c.tokens for c in chunks) == 5


async def test_logprobs_become_per_token_entropies() -> None:
    sent: list[dict] = []
    engine = engine_on(vllm_server(sent, vllm_token_events(PIECES[:3], RETURN, top=5)))
    await engine.start()
    try:
        params = SamplingParams(max_tokens=100, stop_token_ids=(RETURN,), top_logprobs=5)
        chunks = await collect(engine, TOKEN_PROMPT, params)
    finally:
        await engine.close()
    assert sent[0]["logprobs"] == 5
    probabilities = [(k + 1) / 15 for k in range(5)]
    expected = -sum(p * math.log(p) for p in probabilities)
    entropies = [e for c in chunks for e in c.token_entropies]
    assert len(entropies) == 4  # one per generated token, the stop token's included
    assert entropies == pytest.approx([expected] * 4)


async def test_usage_sent_only_at_the_end_counts_the_tokens() -> None:
    sent: list[dict] = []
    engine = engine_on(transformers_serve(sent, pieces=PIECES[:5]))
    await engine.start()
    try:
        chunks = await collect(engine, PROMPT, SamplingParams(max_tokens=500))
    finally:
        await engine.close()
    assert sum(c.tokens for c in chunks) == 15  # the server's usage, not one per event


async def test_each_attempts_seed_reaches_the_server() -> None:
    from submission.policy.defaults import default_policy
    from submission.solver import Solver

    sent: list[dict] = []
    engine = engine_on(transformers_serve(sent), "generation.base_seed=100")
    config = load_config(
        "aimo3",
        None,
        ["solver.attempts=4", "generation.base_seed=100", "prompt.family=tora"],
    )

    class NoSandbox:
        async def arun(self, code: str, session: str, timeout: float):
            raise AssertionError("no code in these pieces")

    await engine.start()
    try:
        solver = Solver(engine, NoSandbox(), config, default_policy(config))
        await solver.solve("p1", "What is 6 times 7?", budget_s=30.0)
    finally:
        await engine.close()
    assert sorted(body["seed"] for body in sent) == [100, 101, 102, 103]


async def test_a_refusal_reaches_the_attempt_record_the_fallback_and_the_report() -> None:
    from submission.policy.defaults import default_policy
    from submission.report import attempts_frame, problems_frame, render_report
    from submission.solver import Solver

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"data": [{"id": "m", "owned_by": "local"}]})
        return httpx.Response(400, json={"detail": "prompt is too long for this model"})

    engine = engine_on(httpx.MockTransport(handle))
    config = load_config("aimo3", None, ["solver.attempts=3"])
    await engine.start()
    try:
        result = await Solver(engine, None, config, default_policy(config)).solve(  # type: ignore[arg-type]
            "p1", "What is 6 times 7?", budget_s=30.0
        )
    finally:
        await engine.close()
    assert result.used_fallback
    assert all("HTTP 400" in (a.error_message or "") for a in result.attempts)
    assert "3 of 3 attempts ended in an engine error: openai: HTTP 400" in result.stop_reason
    from submission.records import ProblemSummary

    summary = ProblemSummary("p1", 0, 1.0, 30.0, 3, 0, 0, 0, result.stop_reason)
    report = render_report(attempts_frame([result]), problems_frame([summary]))
    assert "| attempts ended by an engine error | 3 |" in report
    assert "prompt is too long for this model" in report
    assert '| openai: HTTP 400: {"detail":"prompt is too long for this model"} | 3 |' in report

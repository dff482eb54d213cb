"""submission.engines.trtllm against the TensorRT-LLM contract fake (tests/fakes)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from submission.config import load_config
from submission.engines.base import Chunk, EngineError, SamplingParams
from submission.engines.trtllm import TrtllmEngine
from submission.manifest import EngineManifest, hash_folder, write_manifest
from submission.standin import build_qwen_tokenizer
from tests.fakes import tensorrt_llm as fake_trt
from tests.helpers import cached

pytest.importorskip("transformers")

TRANSCRIPTS = Path(__file__).parents[1] / "submission" / "data" / "tora70b_gsm8k_first250.jsonl"
STOPS = ("<|im_end|>", "<|endoftext|>")
PROMPT = "<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n"


def tora_generation(index: int) -> str:
    """A real ToRA generation: text, a ```python block, ```output, more text, \\boxed{}."""
    with TRANSCRIPTS.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if number == index:
                return json.loads(line)["code"][0]
    raise IndexError(index)


def as_openmath(text: str) -> str:
    """The same real text with OpenMath's code tags."""
    return text.replace("```python\n", "<tool_call>\n", 1).replace(
        "```\n```output", "</tool_call>\n```output", 1
    )


@pytest.fixture(scope="module")
def tokenizer_dir(request: pytest.FixtureRequest) -> Path:
    return cached(request, "qwen25-tokenizer", build_qwen_tokenizer)


def make_engine_dir(
    root: Path,
    tokenizer_dir: Path,
    version: str = "1.0.0",
    max_seq_len: int = 40_960,
    pretrained: dict | None = None,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, root / name)
    config = {
        "version": version,
        "pretrained_config": pretrained or {"architecture": "Qwen2ForCausalLM"},
        "build_config": {
            "max_seq_len": max_seq_len,
            "max_input_len": max_seq_len - 100,
            "max_batch_size": 32,
        },
    }
    (root / "config.json").write_text(json.dumps(config))
    return root


def engine_for(engine_dir: Path, **overrides: str) -> TrtllmEngine:
    sets = [f"engine.trtllm.engine_dir={engine_dir}", "engine.kind=trtllm"]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    return TrtllmEngine.from_config(load_config("aimo3", None, sets))


async def collect(
    engine: TrtllmEngine, params: SamplingParams, prompt: str | list[int] = PROMPT
) -> list[Chunk]:
    chunks = []
    async for chunk in engine.stream(prompt, params):
        chunks.append(chunk)
        assert len(chunks) < 10_000
    return chunks


def joined(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


@pytest.mark.parametrize("version", ["0.19.0", "1.0.0"])
async def test_streams_until_the_single_token_code_end(
    tmp_path, tokenizer_dir, monkeypatch, version
):
    text = as_openmath(tora_generation(0))
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir, version=version)
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: text, version=version)
    engine = engine_for(engine_dir)
    await engine.start()
    params = SamplingParams(
        max_tokens=5000, temperature=0.7, top_p=0.9, seed=11, stop=("</tool_call>", *STOPS)
    )
    chunks = await collect(engine, params)

    assert joined(chunks) == text[: text.index("</tool_call>")]
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert (chunks[-1].finish_reason, chunks[-1].stop) == ("stop", "</tool_call>")
    assert len(chunks) > 3  # streamed, not one block
    sent = fake_trt.sampling_params_of(model.requests[0])
    tokenizer = model.tokenizer
    assert sent["max_tokens"] == 5000
    assert sent["stop_token_ids"] == [
        tokenizer.convert_tokens_to_ids(s) for s in ("</tool_call>", *STOPS)
    ]
    assert (sent["temperature"], sent["top_p"], sent["seed"]) == (0.7, 0.9, 11)
    assert model.requests[0]["streaming"] is True
    assert model.loaded[0]["kv_cache_config"].enable_block_reuse is True
    assert model.loaded[0]["max_batch_size"] == 32
    assert sum(c.tokens for c in chunks) == len(
        tokenizer.encode(text[: text.index("</tool_call>") + 12])
    )


async def test_multi_token_stop_string_is_cut_and_reported(tmp_path, tokenizer_dir, monkeypatch):
    text = tora_generation(1)
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir)
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: text)
    engine = engine_for(engine_dir)
    await engine.start()
    chunks = await collect(engine, SamplingParams(max_tokens=4000, stop=("```output", *STOPS)))

    assert joined(chunks) == text[: text.index("```output")]
    assert (chunks[-1].finish_reason, chunks[-1].stop) == ("stop", "```output")
    assert fake_trt.sampling_params_of(model.requests[0])["stop"] == ["```output"]
    assert all("```output" not in c.text for c in chunks)


async def test_end_of_text_length_and_greedy_temperature(tmp_path, tokenizer_dir, monkeypatch):
    text = tora_generation(2).rsplit("```", 1)[1]  # the closing prose: no stop string inside
    assert len(text) > 20
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir)
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: text)
    engine = engine_for(engine_dir)
    await engine.start()

    ended = await collect(engine, SamplingParams(max_tokens=4000, temperature=0.0, stop=STOPS))
    assert joined(ended) == text
    assert (ended[-1].finish_reason, ended[-1].stop) == ("stop", None)
    sent = fake_trt.sampling_params_of(model.requests[0])
    assert (sent["top_k"], sent["temperature"]) == (1, None)  # greedy, the LLM API's way

    cut = await collect(engine, SamplingParams(max_tokens=7, stop=STOPS))
    assert cut[-1].finish_reason == "length"
    assert sum(c.tokens for c in cut) == 7


async def test_prompt_near_max_seq_len_is_clamped_not_rejected(
    tmp_path, tokenizer_dir, monkeypatch
):
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir, max_seq_len=40_000)
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: "word " * 300)
    engine = engine_for(engine_dir, **{"generation.max_tokens": "32768"})
    await engine.start()
    params = SamplingParams(max_tokens=32_768, stop=STOPS)
    chunks = await collect(engine, params, PROMPT + "x " * 39_800)
    prompt_tokens = len(model.requests[0]["prompt_ids"])
    assert 39_800 < prompt_tokens < 39_900
    assert fake_trt.sampling_params_of(model.requests[0])["max_tokens"] == 40_000 - prompt_tokens
    assert chunks[-1].finish_reason == "length"

    over_input = await collect(engine, params, PROMPT + "x " * 39_950)  # > max_input_len
    assert [(c.text, c.finish_reason) for c in over_input] == [("", "length")]
    full = await collect(engine, params, PROMPT + "x " * 40_000)
    assert [(c.text, c.finish_reason) for c in full] == [("", "length")]
    assert len(model.requests) == 1  # nothing sent that the engine would reject


async def test_closing_the_stream_aborts_the_request(tmp_path, tokenizer_dir, monkeypatch):
    text = as_openmath(tora_generation(3))
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir)
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: text, tokens_per_step=1)
    engine = engine_for(engine_dir)
    await engine.start()
    stream = engine.stream(PROMPT, SamplingParams(max_tokens=4000, stop=STOPS))
    first = await anext(stream)
    assert first.finish_reason is None
    await stream.aclose()
    assert model.requests[0]["aborted"] is True


async def test_engine_error_mid_stream_ends_the_stream(tmp_path, tokenizer_dir, monkeypatch):
    text = tora_generation(4)
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir)
    fake_trt.install(monkeypatch, engine_dir, lambda prompt: text, fail_after_tokens=9)
    engine = engine_for(engine_dir)
    await engine.start()
    chunks = await collect(engine, SamplingParams(max_tokens=4000, stop=STOPS))
    assert chunks[-1].finish_reason == "error"
    assert "illegal memory access" in (chunks[-1].error or "")
    assert sum(c.tokens for c in chunks) <= 9


@pytest.mark.parametrize("executor_attr", ["executor", "session"])
async def test_model_runner_fallback_streams_stops_and_cancels(
    tmp_path, tokenizer_dir, monkeypatch, executor_attr
):
    text = as_openmath(tora_generation(5))
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir, version="0.12.0")
    model = fake_trt.install(
        monkeypatch,
        engine_dir,
        lambda prompt: text,
        version="0.12.0",
        llm_api=False,
        runner_executor_attr=executor_attr,
    )
    engine = engine_for(engine_dir)
    await engine.start()
    try:
        chunks = await collect(
            engine, SamplingParams(max_tokens=4000, stop=("</tool_call>", *STOPS))
        )
        assert joined(chunks) == text[: text.index("</tool_call>")]
        assert (chunks[-1].finish_reason, chunks[-1].stop) == ("stop", "</tool_call>")
        assert model.loaded[0]["kv_cache_enable_block_reuse"] is True
        assert fake_trt.sampling_params_of(model.requests[0])["max_tokens"] == 4000

        stream = engine.stream(PROMPT, SamplingParams(max_tokens=4000, stop=STOPS))
        assert (await anext(stream)).finish_reason is None
        await stream.aclose()
        assert model.requests[1]["aborted"] is True
    finally:
        await engine.close()


@pytest.mark.parametrize(("version", "llm_api"), [("1.0.0", True), ("0.12.0", False)])
async def test_token_id_prompts_and_a_stop_token_id(
    tmp_path, tokenizer_dir, monkeypatch, version, llm_api
):
    """A prompt of ids goes to the engine as it is; a stop token id (not a stop string here)
    ends the stream as `stop_token`, its id last in `token_ids`, its text left out."""
    text = as_openmath(tora_generation(0))
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir, version=version)
    model = fake_trt.install(
        monkeypatch, engine_dir, lambda prompt: text, version=version, llm_api=llm_api
    )
    engine = engine_for(engine_dir)
    await engine.start()
    try:
        tokenizer = model.tokenizer
        prompt_ids = tokenizer.encode(PROMPT, add_special_tokens=False)
        call = tokenizer.convert_tokens_to_ids("</tool_call>")
        params = SamplingParams(max_tokens=4000, stop=STOPS, stop_token_ids=(call,))
        chunks = await collect(engine, params, prompt_ids)
    finally:
        await engine.close()
    assert engine.token_prompts is True
    request = model.requests[0]
    assert request.get("prompt_ids", getattr(request.get("request"), "input_token_ids", None)) == (
        prompt_ids
    )
    before = text[: text.index("</tool_call>")]
    assert joined(chunks) == before
    assert (chunks[-1].finish_reason, chunks[-1].stop, chunks[-1].stop_token) == (
        "stop",
        None,
        call,
    )
    ids = [t for c in chunks for t in c.token_ids]
    assert ids == [*tokenizer.encode(before, add_special_tokens=False), call]
    assert sum(c.tokens for c in chunks) == len(ids)


async def test_batch_size_is_capped_at_the_engines(tmp_path, tokenizer_dir, monkeypatch):
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir)  # built for 32
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: "")
    await engine_for(engine_dir, **{"engine.trtllm.max_batch_size": "64"}).start()
    assert model.loaded[0]["max_batch_size"] == 32
    # Uncapped, the LLM API refuses it (TrtLlmArgs.validate_build_config_with_runtime_params).
    llm_class = fake_trt.sys.modules["tensorrt_llm._tensorrt_engine"].LLM
    with pytest.raises(ValueError, match=r"max_batch_size \[64\] is greater"):
        llm_class(model=str(engine_dir), max_batch_size=64)


@pytest.mark.parametrize("version", ["0.17.0", "0.18.2"])
async def test_before_0_19_auto_takes_the_runner_that_can_cancel(
    tmp_path, tokenizer_dir, monkeypatch, caplog, version
):
    """0.17/0.18 results have no abort(): a closed stream would keep generating."""
    text = as_openmath(tora_generation(6))
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir, version=version)
    model = fake_trt.install(
        monkeypatch, engine_dir, lambda prompt: text, version=version, tokens_per_step=1
    )
    engine = engine_for(engine_dir)
    await engine.start()
    try:
        assert model.loaded[0]["api"] == "runner"
        stream = engine.stream(PROMPT, SamplingParams(max_tokens=4000, stop=STOPS))
        assert (await anext(stream)).finish_reason is None
        await stream.aclose()
        assert model.requests[0]["aborted"] is True
    finally:
        await engine.close()

    forced = engine_for(engine_dir, **{"engine.trtllm.api": "llm"})
    with caplog.at_level(logging.WARNING):
        await forced.start()
    assert model.loaded[1]["api"] == "llm"
    assert "cannot abort" in caplog.text
    stream = forced.stream(PROMPT, SamplingParams(max_tokens=4000, stop=STOPS))
    assert (await anext(stream)).finish_reason is None
    await stream.aclose()  # no abort() to call: the request is left running, not an error
    assert model.requests[-1]["aborted"] is False
    await forced.close()


async def test_refuses_missing_config_and_tokenizer(tmp_path, tokenizer_dir):
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir)
    (engine_dir / "config.json").unlink()
    with pytest.raises(EngineError, match=r"config\.json"):
        await engine_for(engine_dir).start()

    engine_dir = make_engine_dir(tmp_path / "engine2", tokenizer_dir)
    (engine_dir / "tokenizer.json").unlink()
    (engine_dir / "tokenizer_config.json").unlink()
    with pytest.raises(EngineError, match="tokenizer"):
        await engine_for(engine_dir).start()


async def test_refuses_another_tensorrt_llm_version(tmp_path, tokenizer_dir, monkeypatch):
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir, version="0.17.0")
    model = fake_trt.install(monkeypatch, engine_dir, lambda prompt: "", version="1.0.0")
    with pytest.raises(EngineError, match=r"0\.17\.0.*1\.0\.0"):
        await engine_for(engine_dir).start()
    assert model.loaded == []  # refused before loading anything


async def test_manifest_version_wins_over_config(tmp_path, tokenizer_dir, monkeypatch):
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir, version="1.0.0")
    manifest = EngineManifest(
        tensorrt_llm_version="0.21.0",
        greedy_drafter=False,
        max_seq_len=40_960,
        max_input_len=8192,
        max_batch_size=32,
        dtype="bfloat16",
        quantization="fp8",
        speculative_decoding_mode="explicit_draft_tokens",
        draft_len_per_beam=5,
        files=hash_folder(engine_dir),
    )
    write_manifest(engine_dir, manifest)
    fake_trt.install(monkeypatch, engine_dir, lambda prompt: "", version="1.0.0")
    with pytest.raises(EngineError, match=r"0\.21\.0"):
        await engine_for(engine_dir).start()
    (engine_dir / "tokenizer.json").write_text("{}")  # a changed file is not what was built
    with pytest.raises(EngineError, match=r"tokenizer\.json"):
        await engine_for(engine_dir, **{"engine.trtllm.verify_hashes": "true"}).start()


async def test_refuses_max_seq_len_below_the_budget(tmp_path, tokenizer_dir, monkeypatch):
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir, max_seq_len=32_768)
    fake_trt.install(monkeypatch, engine_dir, lambda prompt: "")
    with pytest.raises(EngineError, match="max_seq_len 32768"):
        await engine_for(engine_dir, **{"generation.max_tokens": "32768"}).start()


@pytest.mark.parametrize(
    ("pretrained", "allow", "greedy", "warned"),
    [
        ({"architecture": "ReDrafterForQWenLM", "redrafter_num_beams": 5}, "false", True, True),
        (
            {"architecture": "ReDrafterForQWenLM", "redrafter_greedy_search": True},
            "true",
            False,
            True,
        ),
        (
            {"architecture": "ReDrafterForQWenLM", "redrafter_greedy_search": False},
            "false",
            False,
            False,
        ),
        ({"architecture": "Qwen2ForCausalLM"}, "false", False, False),
    ],
)
async def test_greedy_drafter_detection(
    tmp_path, tokenizer_dir, monkeypatch, caplog, pretrained, allow, greedy, warned
):
    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir, pretrained=pretrained)
    fake_trt.install(monkeypatch, engine_dir, lambda prompt: "")
    engine = engine_for(engine_dir, **{"engine.trtllm.allow_greedy_drafter": allow})
    with caplog.at_level(logging.WARNING):
        await engine.start()
    assert engine.greedy is greedy
    assert ("GREEDY DRAFTER" in caplog.text) is warned


async def test_a_real_transcript_through_the_tir_loop(tmp_path, tokenizer_dir, monkeypatch):
    """The engine's stops drive the real TIR loop: code runs once, the answer comes back."""
    from submission.answer import AnswerRange
    from submission.families.openmath import OpenmathFamily
    from submission.records import AttemptRecord
    from submission.tir import TirLoop

    generation = as_openmath(tora_generation(0))
    before, _, after = generation.partition("</tool_call>\n```output\n")
    recorded_output, _, closing = after.partition("```\n")
    tags = OpenmathFamily.tags

    def respond(prompt: str) -> str:  # the model's next round, given what it has seen
        return generation if "```output" not in prompt else closing

    class Runner:
        def __init__(self) -> None:
            self.codes: list[str] = []

        async def arun(self, code: str, session: str, timeout: float):
            self.codes.append(code)
            return type("Result", (), {"status": "ok", "output": recorded_output})()

    engine_dir = make_engine_dir(tmp_path / "engine", tokenizer_dir)
    fake_trt.install(monkeypatch, engine_dir, respond)
    engine = engine_for(engine_dir)
    await engine.start()
    config = load_config("aimo3", None, [])
    runner = Runner()
    family = OpenmathFamily.from_config(config)
    tir = TirLoop(engine, runner, family, config.tir, AnswerRange(0, 99_999))
    record = AttemptRecord(problem_id="gsm8k-0", attempt_num=0, seed=0)
    params = SamplingParams(max_tokens=4000, stop=STOPS, seed=0)
    await tir.run_attempt(record, PROMPT, params, session="a0")

    assert (record.answer, record.code_calls, record.errors) == (18, 1, 0)
    assert runner.codes == [before.partition("<tool_call>\n")[2].strip("\n")]
    assert record.text.startswith(before + tags.format_output(recorded_output))
    assert record.finish_reason in ("boxed", "stop")

"""submission.engines.hf on CPU: a tiny random Qwen2 with Qwen2.5's real tokenizer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from submission.config import load_config
from submission.engines.base import SamplingParams
from submission.standin import build_random_qwen2
from tests.helpers import cached, collect, text_of

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from submission.engines.hf import HfEngine  # noqa: E402

PROMPTS = (
    "<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nA robe takes 2 bolts of blue fiber and half that much white.<|im_end|>\n",
    "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nSolve x^2 = 4.<|im_end|>\n",
)


@pytest.fixture(scope="module")
def model_dir(request: pytest.FixtureRequest) -> Path:
    torch.set_num_threads(1)  # the CI box has 2 cores; more threads only contend
    return cached(request, "qwen2-tiny-random-v2", build_random_qwen2)


async def started(model_dir: Path, *sets: str) -> HfEngine:
    config = load_config(
        "aimo3", None, [f"engine.hf.model={model_dir}", "engine.hf.device=cpu", *sets]
    )
    engine = HfEngine.from_config(config)
    await engine.start()
    return engine


@pytest.fixture
async def engine(model_dir: Path):
    engine = await started(model_dir)
    yield engine
    await engine.close()


async def test_batched_streams_match_each_stream_alone(engine):
    params = SamplingParams(max_tokens=24, temperature=0.0)
    alone = [text_of(await collect(engine, p, params)) for p in PROMPTS]

    async def late(prompt: str, delay_s: float) -> str:
        await asyncio.sleep(delay_s)  # joins a batch already decoding
        return text_of(await collect(engine, prompt, params))

    together = await asyncio.gather(*(late(p, 0.05 * i) for i, p in enumerate(PROMPTS)))
    assert list(together) == alone
    assert len(set(alone)) > 1  # different prompts, different continuations


async def test_stop_string_is_cut_and_reported(engine):
    greedy = SamplingParams(max_tokens=30, temperature=0.0)
    full = text_of(await collect(engine, PROMPTS[0], greedy))
    stop = full[12:15]
    cut = full.index(stop)
    chunks = await collect(
        engine, PROMPTS[0], SamplingParams(max_tokens=30, temperature=0.0, stop=(stop,))
    )
    assert text_of(chunks) == full[:cut]
    assert (chunks[-1].finish_reason, chunks[-1].stop) == ("stop", stop)


async def test_length_and_end_of_sequence(engine):
    chunks = await collect(engine, PROMPTS[1], SamplingParams(max_tokens=9, temperature=0.0))
    assert chunks[-1].finish_reason == "length"
    assert sum(c.tokens for c in chunks) == 9

    # Make the greedy first token the end-of-sequence token: the stream ends there.
    first = engine.tokenizer.encode(text_of(chunks), add_special_tokens=False)[0]
    engine.eos_ids = {first}
    ended = await collect(engine, PROMPTS[1], SamplingParams(max_tokens=9, temperature=0.0))
    assert [(c.text, c.finish_reason, c.stop) for c in ended] == [("", "stop", None)]


async def test_seeds_reproduce_and_differ(engine):
    def params(seed: int) -> SamplingParams:
        return SamplingParams(max_tokens=12, temperature=1.0, top_p=0.95, top_k=50, seed=seed)

    first = await asyncio.gather(*(collect(engine, PROMPTS[0], params(s)) for s in range(4)))
    again = await asyncio.gather(*(collect(engine, PROMPTS[0], params(s)) for s in range(4)))
    assert [text_of(c) for c in first] == [text_of(c) for c in again]
    assert len({text_of(c) for c in first}) > 1


async def test_closing_a_stream_removes_it_from_the_batch(engine):
    long = SamplingParams(max_tokens=10_000, temperature=0.0)
    stream = engine.stream(PROMPTS[0], long)
    survivor = asyncio.create_task(collect(engine, PROMPTS[1], SamplingParams(max_tokens=20)))
    assert (await anext(stream)).finish_reason is None
    await stream.aclose()
    for _ in range(200):  # bounded: the decode thread drops it at its next step
        if engine.active_requests <= 1:
            break
        await asyncio.sleep(0.01)
    assert engine.active_requests <= 1
    chunks = await survivor
    assert chunks[-1].finish_reason == "length"
    for _ in range(200):
        if engine.active_requests == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.active_requests == 0


async def test_a_failing_step_ends_streams_with_error_and_engine_recovers(engine, monkeypatch):
    real_forward = engine.model.forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", flaky)
    chunks = await collect(engine, PROMPTS[0], SamplingParams(max_tokens=20, temperature=0.0))
    assert chunks[-1].finish_reason == "error"
    assert "out of memory" in (chunks[-1].error or "")
    after = await collect(engine, PROMPTS[0], SamplingParams(max_tokens=5, temperature=0.0))
    assert after[-1].finish_reason == "length"


async def test_chunked_prefill_gives_the_same_text(engine, model_dir):
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    whole = text_of(await collect(engine, PROMPTS[2], greedy))
    chunked = await started(model_dir, "engine.hf.prefill_chunk_tokens=5")
    try:
        assert len(chunked.tokenizer.encode(PROMPTS[2])) > 3 * 5
        assert text_of(await collect(chunked, PROMPTS[2], greedy)) == whole
    finally:
        await chunked.close()


def ids_of(chunks) -> list[int]:
    return [token for chunk in chunks for token in chunk.token_ids]


async def test_a_token_id_prompt_continues_as_its_text_does(engine):
    greedy = SamplingParams(max_tokens=16, temperature=0.0)
    by_text = await collect(engine, PROMPTS[0], greedy)
    ids = engine.tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    by_ids = await collect(engine, ids, greedy)
    assert engine.token_prompts is True
    assert text_of(by_ids) == text_of(by_text)
    assert ids_of(by_ids) == ids_of(by_text)
    assert all(len(c.token_ids) == c.tokens == 1 for c in by_ids)  # one token per chunk
    decoded = engine.tokenizer.decode(ids_of(by_ids), skip_special_tokens=False)
    assert decoded == text_of(by_ids)


async def test_a_stop_token_id_ends_the_stream_with_its_id_and_without_its_text(engine):
    greedy = SamplingParams(max_tokens=16, temperature=0.0)
    ids = ids_of(await collect(engine, PROMPTS[1], greedy))
    stop = ids[5]
    first = ids.index(stop)  # the first time greedy decoding writes it
    chunks = await collect(
        engine, PROMPTS[1], SamplingParams(max_tokens=16, temperature=0.0, stop_token_ids=(stop,))
    )
    assert (chunks[-1].finish_reason, chunks[-1].stop_token, chunks[-1].stop) == (
        "stop",
        stop,
        None,
    )
    assert ids_of(chunks) == ids[: first + 1]  # its id is the last one reported
    before = engine.tokenizer.decode(ids[:first], skip_special_tokens=False)
    assert text_of(chunks) == before  # its text is not


async def test_token_entropies_over_the_top_logprobs(engine, model_dir):
    asked = SamplingParams(max_tokens=4, temperature=0.0, top_logprobs=5)
    chunks = await collect(engine, PROMPTS[2], asked)
    entropies = [e for c in chunks for e in c.token_entropies]
    assert len(entropies) == 4
    # The first token's, computed here from the model's own logits for the prompt.
    ids = torch.tensor([engine.tokenizer.encode(PROMPTS[2], add_special_tokens=False)])
    with torch.inference_mode():
        logits = engine.model(input_ids=ids).logits[0, -1].float()
    top = torch.log_softmax(logits, dim=-1).topk(5).values
    assert entropies[0] == pytest.approx(float(-(top.exp() * top).sum()), rel=1e-4)
    plain = await collect(engine, PROMPTS[2], SamplingParams(max_tokens=4, temperature=0.0))
    assert all(c.token_entropies == () for c in plain)


async def test_a_prompt_id_outside_the_vocabulary_is_an_error_not_a_crash(engine):
    vocabulary = engine.model.config.vocab_size
    chunks = await collect(engine, [1, 2, vocabulary + 5], SamplingParams(max_tokens=4))
    assert chunks[-1].finish_reason == "error"
    after = await collect(engine, PROMPTS[0], SamplingParams(max_tokens=3, temperature=0.0))
    assert after[-1].finish_reason == "length"

"""The replay engine on the embedded ToRA transcripts: rounds, stops, seeds, limits, aborts."""

from __future__ import annotations

import json

import pytest

from submission.config import load_config
from submission.engines.base import SamplingParams
from submission.engines.replay import EMBEDDED_TRANSCRIPTS, ReplayEngine, split_rounds
from submission.families.text import PromptTemplate
from submission.families.tora import TORA_TAGS
from tests.helpers import collect

TORA = TORA_TAGS


def first_record() -> dict:
    return json.loads(EMBEDDED_TRANSCRIPTS[0].read_text(encoding="utf-8").splitlines()[0])


@pytest.fixture
def engine() -> ReplayEngine:
    return ReplayEngine.from_config(load_config(overrides=["prompt.family=tora"]))


@pytest.fixture
def template() -> PromptTemplate:
    return PromptTemplate.from_config(load_config().prompt)


def test_split_rounds_reassembles_the_recording() -> None:
    text = first_record()["code"][0]
    rounds, outputs = split_rounds(text, TORA)
    assert outputs == ("18\n",)
    rebuilt = rounds[0] + TORA.format_output(outputs[0]) + rounds[1]
    assert rebuilt == text


def test_every_embedded_recording_reassembles() -> None:
    for path in EMBEDDED_TRANSCRIPTS:
        for line in path.read_text(encoding="utf-8").splitlines():
            text = json.loads(line)["code"][0]
            rounds, outputs = split_rounds(text, TORA)
            assert len(rounds) == len(outputs) + 1
            rebuilt = "".join(
                r + TORA.format_output(o) for r, o in zip(rounds, outputs, strict=False)
            )
            assert rebuilt + rounds[-1] == text


async def test_stream_stops_at_code_and_carries_the_recorded_output(
    engine: ReplayEngine, template: PromptTemplate
) -> None:
    record = first_record()
    prompt = template.render(record["question"])
    chunks = await collect(
        engine, prompt, SamplingParams(max_tokens=4096, stop=(TORA.stop,), seed=0)
    )
    assert all(c.finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert (last.finish_reason, last.stop) == ("stop", TORA.stop)
    assert last.meta["recorded_output"] == "18\n"
    text = "".join(c.text for c in chunks)
    assert text.startswith("```python\n") and text.endswith("```\n")
    assert TORA.stop not in text


async def test_continuation_serves_the_text_after_the_recorded_output(
    engine: ReplayEngine, template: PromptTemplate
) -> None:
    record = first_record()
    rounds, _ = split_rounds(record["code"][0], TORA)
    prompt = template.render(record["question"]) + rounds[0] + TORA.format_output("our own 18\n")
    chunks = await collect(
        engine, prompt, SamplingParams(max_tokens=4096, stop=(TORA.stop,), seed=0)
    )
    assert "".join(c.text for c in chunks) == rounds[1]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].stop is None


async def test_seed_picks_the_recording(engine: ReplayEngine, template: PromptTemplate) -> None:
    record = first_record()
    prompt = template.render(record["question"])
    params = SamplingParams(max_tokens=4096, stop=(TORA.stop,))
    texts = []
    for seed in (0, 1, 2):
        chunks = await collect(engine, prompt, SamplingParams(**{**params.__dict__, "seed": seed}))
        texts.append("".join(c.text for c in chunks))
    assert texts[0] != texts[1]  # two different models recorded this problem
    assert texts[0] == texts[2]  # seeds cycle through the recordings


async def test_max_tokens_ends_with_length(engine: ReplayEngine, template: PromptTemplate) -> None:
    prompt = template.render(first_record()["question"])
    chunks = await collect(engine, prompt, SamplingParams(max_tokens=5, stop=(TORA.stop,)))
    assert chunks[-1].finish_reason == "length"
    assert sum(c.tokens for c in chunks) == 5


async def test_unknown_problem_is_an_error_chunk(
    engine: ReplayEngine, template: PromptTemplate
) -> None:
    chunks = await collect(engine, template.render("What is 6 x 7?"), SamplingParams(max_tokens=10))
    assert len(chunks) == 1
    assert chunks[0].finish_reason == "error" and "no recorded generation" in (
        chunks[0].error or ""
    )


async def test_closing_the_stream_stops_it(template: PromptTemplate) -> None:
    engine = ReplayEngine.from_config(
        load_config(overrides=["prompt.family=tora", "engine.replay.chunk_tokens=1"])
    )
    stream = engine.stream(
        template.render(first_record()["question"]), SamplingParams(max_tokens=999)
    )
    first = await anext(stream)
    assert first.finish_reason is None
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)

"""The hf engine with a gpt-oss-shaped model (random weights, gpt-oss's real tokenizer) and the
harmony family: token-id prompts longer than the sliding window, batched as alone and as
transformers' own generate; and the GPU smoke script's CPU path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from submission.commands.smoke import SmokeSettings
from submission.config import load_config
from submission.engines.base import SamplingParams
from tests.gpu_smoke_harmony import build_model, smoke_rows
from tests.harmony_streams import harmony_family

torch = pytest.importorskip("torch")
from submission.engines.hf import HfEngine  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(harmony_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return build_model(tmp_path_factory.mktemp("gpt-oss"), harmony_dir, "tiny", layers=2)


async def test_harmony_prompts_past_the_sliding_window_batch_as_alone(model_dir: Path) -> None:
    family = harmony_family()
    prompts = [family.render(p) for p in ("What is 2+2?", "Count the primes below 100. " * 8)]
    assert all(len(p) > 128 for p in prompts)  # longer than gpt-oss's sliding window
    config = load_config(overrides=[f"engine.hf.model={model_dir}", "engine.hf.device=cpu"])
    engine = HfEngine.from_config(config)
    await engine.start()
    params = SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=family.stop_token_ids)

    async def ids(prompt: list[int], delay_s: float = 0.0) -> list[int]:
        await asyncio.sleep(delay_s)
        return [t async for chunk in engine.stream(prompt, params) for t in chunk.token_ids]

    try:
        alone = [await ids(p) for p in prompts]
        together = await asyncio.gather(*(ids(p, 0.05 * i) for i, p in enumerate(prompts)))
        reference = engine.model.generate(
            torch.tensor([prompts[1]]), max_new_tokens=12, do_sample=False
        )[0, len(prompts[1]) :].tolist()
    finally:
        await engine.close()
    assert list(together) == alone
    assert alone[1] == reference


def test_the_gpu_smoke_script_runs_on_cpu(harmony_dir: Path) -> None:
    rows = {
        row.check: row
        for row in smoke_rows(
            harmony_dir,
            "tiny",
            2,
            SmokeSettings(max_tokens=8, attempt_tokens=32, problems=1),
            "engine.hf.device=cpu",
            "sandbox.first_session_uid=64000",
        )
    }
    # Random weights never write a tool call; the rows the harmony path runs through hold
    # (cancel latency and the sandbox rows are the smoke command's own: tests/test_smoke.py).
    assert rows["stop at <|call|>"].verdict == "fail"
    assert "0 code calls in 1 attempts" in rows["stop at <|call|>"].detail
    harmony_path = (
        "engine start",
        "tokens/s (1/8/16 streams)",
        "greedy self-stop",
        "stop token id",
    )
    assert {rows[name].verdict for name in harmony_path} == {"pass"}

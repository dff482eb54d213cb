"""GPU measurements of the hf engine (numbers kept in docs/engines.md).

A randomly initialised model of Qwen2.5-1.5B's shape with Qwen2.5's tokenizer:
tokens/s at 1, 8 and 16 streams, the time from cancelling a stream to its end
(and to its slot leaving the batch), and the sandbox answering after CUDA was
initialised in the parent (one sandbox started before CUDA, one after).

    python -m tests.gpu_engine_hf --tokenizer-dir .gpucarry/tokenizer --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from submission.config import PACKAGE_DATA, load_config
from submission.engines.base import SamplingParams
from submission.families.text import PromptTemplate
from submission.sandbox import Sandbox

log = logging.getLogger("gpu_engine_hf")


def build_model(out_dir: Path, tokenizer_dir: Path, shape: str) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from submission.standin import FIRST_ADDED_ID, QWEN25_VOCAB_SIZE, SHAPES

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out_dir / name)
    config = Qwen2Config(
        vocab_size=QWEN25_VOCAB_SIZE,
        bos_token_id=FIRST_ADDED_ID,
        eos_token_id=FIRST_ADDED_ID + 2,
        tie_word_embeddings=True,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    del model
    return out_dir


async def drain(stream: Any) -> int:
    tokens = 0
    async for chunk in stream:
        tokens += chunk.tokens
    return tokens


async def throughput(engine: Any, prompt: str, streams: int, max_tokens: int) -> dict[str, float]:
    params = [SamplingParams(max_tokens=max_tokens, seed=i) for i in range(streams)]
    started = time.perf_counter()
    tokens = await asyncio.gather(*(drain(engine.stream(prompt, p)) for p in params))
    seconds = time.perf_counter() - started
    return {
        "streams": streams,
        "tokens": sum(tokens),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(sum(tokens) / seconds, 1),
        "tokens_per_s_per_stream": round(sum(tokens) / seconds / streams, 1),
    }


async def cancel_latency(engine: Any, prompt: str, streams: int, repeats: int) -> dict[str, float]:
    """Cancel one of `streams` running streams: time to its end, and to its slot being freed."""
    to_end, to_freed = [], []
    for _ in range(repeats):
        others = [
            asyncio.create_task(drain(engine.stream(prompt, SamplingParams(max_tokens=200))))
            for _ in range(streams - 1)
        ]
        victim = engine.stream(prompt, SamplingParams(max_tokens=100_000))
        for _ in range(20):  # let it decode a while
            await anext(victim)
        while engine.active_requests < streams:
            await asyncio.sleep(0.001)
        started = time.perf_counter()
        await victim.aclose()
        to_end.append(time.perf_counter() - started)
        while engine.active_requests >= streams:
            await asyncio.sleep(0.0005)
        to_freed.append(time.perf_counter() - started)
        await asyncio.gather(*others)
    return {
        "streams": streams,
        "repeats": repeats,
        "cancel_to_stream_end_ms_median": round(statistics.median(to_end) * 1e3, 3),
        "cancel_to_slot_freed_ms_median": round(statistics.median(to_freed) * 1e3, 2),
        "cancel_to_slot_freed_ms_max": round(max(to_freed) * 1e3, 2),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config("aimo3", None, [])
    early = Sandbox.from_config(config)  # the designed order: before CUDA
    import torch
    import transformers

    from submission.engines.hf import HfEngine

    results: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "parent_uid": os.getuid(),  # the sandbox's sessions drop to `nobody` under root
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp), Path(args.tokenizer_dir), args.shape)
        engine = HfEngine.from_config(
            load_config(
                "aimo3", None, [f"engine.hf.model={model_dir}", "engine.hf.max_batch_size=16"]
            )
        )
        await engine.start()
    results["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results["cuda_initialised_in_parent"] = bool(torch.cuda.is_initialized())
    late = Sandbox.from_config(config)  # started after CUDA was initialised
    code = "import math, os\nprint(sum(i * i for i in range(10)), math.factorial(5), os.getuid())"
    for name, sandbox in (
        ("sandbox_started_before_cuda", early),
        ("sandbox_started_after_cuda", late),
    ):
        result = await sandbox.arun(code, session="check", timeout=10.0)
        results[name] = {
            "status": result.status,
            "stdout": result.stdout,
            "seconds": result.seconds,
        }
        sandbox.close()

    problem = (PACKAGE_DATA / "aimo3_reference.csv").read_text().splitlines()[1]
    prompt = PromptTemplate.from_config(config.prompt).render(problem)
    await throughput(engine, prompt, 2, 16)  # warm-up
    results["throughput"] = [
        await throughput(engine, prompt, n, args.max_tokens) for n in (1, 8, 16)
    ]
    results["cancel"] = await cancel_latency(engine, prompt, 16, args.cancel_repeats)
    await engine.close()
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--shape", default="qwen2.5-1.5b")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--cancel-repeats", type=int, default=5)
    parser.add_argument("--out", default="")
    result = asyncio.run(main(parser.parse_args()))
    text = json.dumps(result, indent=2)
    log.info("%s", text)
    if result and parser.parse_args().out:
        Path(parser.parse_args().out).write_text(text)

"""`smoke` with the hf engine on a random-weight gpt-oss-shaped model, through the harmony family.

Builds a `GptOssForCausalLM` from gpt-oss-20b's architecture (tests/data/
gpt_oss_20b_config.json) with `--layers` layers (alternating sliding-window and
full attention, as the real model), random bf16 weights, and the real gpt-oss
tokenizer; saves it to a temporary folder; then runs the `smoke` command's rows with
`engine.kind=hf` and `prompt.family=harmony`: token-id prompts rendered by
openai-harmony, stop token ids, the python tool's stop, cancel latency, the sandbox
after CUDA. `--harmony-dir` holds what `python -m submission vocab --out DIR`
writes (tokenizer.json, tokenizer_config.json, o200k_base.tiktoken): the GPU
machine has no internet, so the folder is carried there. `--shape tiny` is the
CPU path (tests/test_engine_hf_harmony.py runs it).

    python -m submission vocab --out .gpucarry/harmony     # here, once
    python -m tests.gpu_smoke_harmony --harmony-dir .gpucarry/harmony --layers 2 \\
        --out "$OUT/smoke_harmony.json"                  # on the GPU machine
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from submission.commands.smoke import Row, SmokeSettings, print_table, run_smoke
from submission.config import load_config
from submission.families.harmony_vocab import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

GPT_OSS_20B = Path(__file__).parent / "data" / "gpt_oss_20b_config.json"
# The CPU shape: gpt-oss's layout (vocabulary, layer types, window, experts routing, YaRN)
# at toy widths.
TINY = {
    "hidden_size": 64,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "experts_per_token": 2,
}


def model_config(shape: str, layers: int) -> dict[str, Any]:
    """gpt-oss-20b's config.json with `layers` layers (and toy widths for `tiny`)."""
    config = json.loads(GPT_OSS_20B.read_text(encoding="utf-8"))
    if shape == "tiny":
        config.update(TINY)
    config["num_hidden_layers"] = layers
    config["layer_types"] = config["layer_types"][:layers]
    return config


def build_model(out_dir: Path, harmony_dir: Path, shape: str, layers: int) -> Path:
    """A random-weight gpt-oss-shaped model folder with the real tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(model_config(shape, layers)), "utf-8")
    for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
        shutil.copy(harmony_dir / name, out_dir / name)
    config = AutoConfig.from_pretrained(out_dir)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    del model
    return out_dir


def smoke_rows(
    harmony_dir: Path, shape: str, layers: int, settings: SmokeSettings, *overrides: str
) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "gpt-oss", harmony_dir, shape, layers)
        config = load_config(
            "aimo3",
            None,
            [
                "engine.kind=hf",
                f"engine.hf.model={model_dir}",
                "prompt.family=harmony",
                f"prompt.harmony.vocabulary_dir={harmony_dir}",
                *overrides,
            ],
        )
        return asyncio.run(run_smoke(config, settings))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gpu_smoke_harmony", description=__doc__)
    parser.add_argument("--harmony-dir", type=Path, required=True)
    parser.add_argument("--shape", choices=("gpt-oss-20b", "tiny"), default="gpt-oss-20b")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=SmokeSettings.max_tokens)
    parser.add_argument("--attempt-tokens", type=int, default=512)
    parser.add_argument("--problems", type=int, default=SmokeSettings.problems)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None, help="the rows as JSON")
    args = parser.parse_args(argv)
    settings = SmokeSettings(args.max_tokens, args.attempt_tokens, args.problems)
    rows = smoke_rows(
        args.harmony_dir.resolve(), args.shape, args.layers, settings, *args.overrides
    )
    print_table(rows, f"hf, harmony family, {args.shape} x {args.layers} layers, random weights")
    if args.out is not None:
        args.out.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n", "utf-8")
    return 1 if any(r.verdict == "fail" and r.check != "stop at <|call|>" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())

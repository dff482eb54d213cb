"""The whole pipeline for real on stand-in tools: every stage, stamps chaining, reruns.

The GPU tools (huggingface-cli, ns, torchrun, trtllm-build, convert_checkpoint.py)
are replaced by one small script that parses the flags the real tools take and
writes the folders they write; calibration and packaging run for real.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import polars as pl
import pytest

BUILD_DIR = Path(__file__).resolve().parents[1] / "build"
sys.path.insert(0, str(BUILD_DIR))

import pipeline  # noqa: E402

from submission.config import PACKAGE_DATA  # noqa: E402
from submission.manifest import read_manifest, verify_files  # noqa: E402

STUB = r"""
import argparse, json, os, sys
from pathlib import Path

tool = Path(sys.argv[0]).name
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(tool + "\n")
p = argparse.ArgumentParser()
for flag in ("--local-dir", "--repo-type", "--output_model", "--output_dir", "--llm_name_or_path",
             "--drafter_predict_n_tokens", "--learning_rate", "--drafter_num_layers",
             "--checkpoint_dir", "--base_model_checkpoint_dir", "--redrafter_draft_len_per_beam",
             "--dtype", "--max_batch_size", "--max_seq_len", "--max_input_len"):
    p.add_argument(flag)
p.add_argument("--redrafter_no_greedy_search", action="store_true")
args, _ = p.parse_known_args(sys.argv[1:])

def write(path, data):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data))

if tool == "huggingface-cli" and args.repo_type == "dataset":
    target = Path(args.local_dir) / "data" / "tir-00000-of-00001.parquet"
    target.parent.mkdir(parents=True)
    target.write_bytes(Path(os.environ["STUB_TIR"]).read_bytes())
    (Path(args.local_dir) / "README.md").write_text("configs: tir")
elif tool == "huggingface-cli":
    write(Path(args.local_dir) / "config.json", {"architectures": ["Qwen2ForCausalLM"]})
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        write(Path(args.local_dir) / name, {"file": name})
elif tool == "ns":
    write(args.output_model + "-tmp-ckpt/config.json",
          {"architecture": "Qwen2ForCausalLM", "dtype": "bfloat16",
           "quantization": {"quant_algo": "FP8"}})
elif tool == "torchrun":
    name = Path(args.llm_name_or_path).name
    out = (f"{args.output_dir}_redrafter_{name}_n_{args.drafter_predict_n_tokens}"
           f"_lr_{float(args.learning_rate)}_layers_{args.drafter_num_layers}")
    layers = int(args.drafter_num_layers)
    write(Path(out) / "config.json", {"num_draft_layers": layers, "rnn": True})
elif tool == "convert_checkpoint.py":
    base = json.loads((Path(args.base_model_checkpoint_dir) / "config.json").read_text())
    base.update(architecture="ReDrafterForQWenLM", redrafter_num_beams=1,
                redrafter_draft_len_per_beam=int(args.redrafter_draft_len_per_beam),
                redrafter_greedy_search=not args.redrafter_no_greedy_search)
    write(Path(args.output_dir) / "config.json", base)
elif tool == "trtllm-build":
    pretrained = json.loads((Path(args.checkpoint_dir) / "config.json").read_text())
    write(Path(args.output_dir) / "config.json", {
        "version": "1.0.0", "pretrained_config": pretrained,
        "build_config": {"max_batch_size": int(args.max_batch_size),
                         "max_seq_len": int(args.max_seq_len),
                         "max_input_len": int(args.max_input_len),
                         "speculative_decoding_mode": 16}})
    (Path(args.output_dir) / "rank0.engine").write_bytes(b"engine" * 1000)
"""

H100 = pipeline.Facts("NVIDIA H100 80GB HBM3", (9, 0), "1.0.0", True, 500.0)


@pytest.fixture
def build_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pipeline.PipelineConfig:
    transcripts = PACKAGE_DATA / "toracode34b_gsm8k_first250.jsonl"
    rows = [json.loads(line) for line in transcripts.read_text().splitlines()[:8]]
    tir = tmp_path / "tir.parquet"
    pl.DataFrame(
        {
            "problem": [r["question"] for r in rows],
            "generated_solution": [r["code"][0] for r in rows],
        }
    ).write_parquet(tir)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    config = pipeline.load_pipeline_config(None, work_dir=str(tmp_path / "work"))
    convert = Path(config.work_dir) / config.quantize.trtllm_examples_dir / "redrafter"
    convert.mkdir(parents=True)
    for path in [bin_dir / t for t in ("huggingface-cli", "ns", "torchrun", "trtllm-build")] + [
        convert / "convert_checkpoint.py"
    ]:
        path.write_text(f"#!{sys.executable}\n{STUB}")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "calls.log"))
    monkeypatch.setenv("STUB_TIR", str(tir))
    config.python = sys.executable
    config.calibration.rows = 5
    config.package.dataset_id = "me/omr-fp8-redrafter"
    return config


def run(config: pipeline.PipelineConfig) -> list[str]:
    printed: list[str] = []
    pipeline.run_pipeline(config, H100, list(pipeline.STAGES), emit=printed.append)
    return [text.splitlines()[0] for text in printed]


def test_all_stages_then_nothing_then_only_what_changed(build_box: pipeline.PipelineConfig) -> None:
    config = build_box
    work = Path(config.work_dir)
    first = run(config)
    assert all(line.endswith(": runs") for line in first), first
    calls = (work.parent / "calls.log").read_text().split()
    # The interpreter runs convert_checkpoint.py, so the stub logs its name as argv[0].
    assert calls == [
        "huggingface-cli",
        "huggingface-cli",
        "ns",
        "torchrun",
        "convert_checkpoint.py",
        "trtllm-build",
    ]
    dataset = work / "kaggle-dataset"
    manifest = read_manifest(dataset)
    assert verify_files(dataset, manifest) == []
    assert (manifest.quantization, manifest.greedy_drafter, manifest.draft_len_per_beam) == (
        "fp8",
        False,
        3,
    )
    assert manifest.speculative_decoding_mode == "explicit_draft_tokens"
    assert set(manifest.build_args) == {
        "quantize.checkpoint",
        "drafter.train",
        "drafter.convert",
        "engine.build",
    }
    assert pl.read_parquet(work / "calibrate_openmathreasoning" / "data.parquet").height == 5

    second = run(config)
    assert all(line.endswith("up to date, skipped") for line in second), second
    assert len((work.parent / "calls.log").read_text().split()) == len(calls)

    config.engine.max_batch_size = 16
    third = run(config)
    rerun = [line.split(":")[0].removeprefix("# ") for line in third if line.endswith(": runs")]
    assert rerun == ["engine.build", "package.dataset"]
    assert read_manifest(dataset).max_batch_size == 16

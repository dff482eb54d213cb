"""build/pipeline.py: golden command lines per stage, config errors, dry run, stamps."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

BUILD_DIR = Path(__file__).resolve().parents[1] / "build"
sys.path.insert(0, str(BUILD_DIR))

import pipeline  # noqa: E402

SAMPLE = BUILD_DIR / "pipeline.toml"
H100 = pipeline.Facts("NVIDIA H100 80GB HBM3", (9, 0), "1.0.0", True, 500.0)
A100_NO_NS = pipeline.Facts("NVIDIA A100-SXM4-80GB", (8, 0), "1.0.0", False, 500.0)
H100_NO_NS = pipeline.Facts("NVIDIA H100 80GB HBM3", (9, 0), "1.0.0", False, 500.0)


def commands(stage: str, facts: pipeline.Facts = H100, **overrides: object) -> list[str]:
    config = pipeline.load_pipeline_config(SAMPLE, work_dir="/w")
    for dotted, value in overrides.items():
        section, name = dotted.split("__")
        setattr(getattr(config, section), name, value)
    return [shlex.join(step.argv) for step in pipeline.plan(config, facts)[stage]]


def test_fetch_golden() -> None:
    assert commands("fetch") == [
        "huggingface-cli download nvidia/OpenMath-Nemotron-14B-Kaggle"
        " --local-dir /w/OpenMath-Nemotron-14B-kaggle",
        "huggingface-cli download nvidia/OpenMathReasoning --repo-type dataset"
        " --local-dir /w/OpenMathReasoning --include README.md 'data/tir-*'",
    ]


def test_calibration_golden() -> None:
    assert commands("calibration") == [
        f"python {BUILD_DIR}/calibration.py --source '/w/OpenMathReasoning/data/tir-*.parquet'"
        " --rows 4096 --problem-column problem --solution-column generated_solution"
        " --output /w/calibrate_openmathreasoning/data.parquet --profile aimo3"
    ]


def test_quantize_golden_ns_convert_on_hopper() -> None:
    # The recipe's `ns convert`, plus --calib_size (NeMo-Skills' option, default 4096).
    assert commands("quantize") == [
        "ns convert --input_model /w/OpenMath-Nemotron-14B-kaggle"
        " --output_model /w/OpenMath-Nemotron-14B-kaggle-fp8-trtllm"
        " --convert_from hf --convert_to trtllm --num_gpus 1 --dtype fp8"
        " --hf_model_name nvidia/OpenMath-Nemotron-14B-kaggle --model_type qwen"
        " --max_input_len 30000 --max_seq_len 32000 --no-trt_reuse_tmp_engine"
        " --calib_dataset /w/calibrate_openmathreasoning --calib_size 4096"
    ]


def test_quantize_golden_trtllm_example_without_nemo_skills() -> None:
    assert commands("quantize", H100_NO_NS) == [
        "python /w/TensorRT-LLM/examples/quantization/quantize.py"
        " --model_dir /w/OpenMath-Nemotron-14B-kaggle"
        " --output_dir /w/OpenMath-Nemotron-14B-kaggle-fp8-trtllm-tmp-ckpt"
        " --dtype auto --qformat fp8 --tp_size 1"
        " --calib_dataset /w/calibrate_openmathreasoning --calib_size 4096"
    ]


def test_quantize_int8_weight_only_before_ada() -> None:
    # A100 (sm_80) has no FP8: int8 weight-only, no calibration data, no fp8 gemm plugin.
    assert commands("quantize", A100_NO_NS) == [
        "python /w/TensorRT-LLM/examples/quantization/quantize.py"
        " --model_dir /w/OpenMath-Nemotron-14B-kaggle"
        " --output_dir /w/OpenMath-Nemotron-14B-kaggle-fp8-trtllm-tmp-ckpt"
        " --dtype auto --qformat int8_wo --tp_size 1"
    ]
    assert "--gemm_plugin bfloat16" in commands("engine", A100_NO_NS)[0]
    with pytest.raises(pipeline.PipelineError, match="fp8 only"):
        commands("quantize", A100_NO_NS, quantize__tool="ns")


def test_drafter_golden() -> None:
    train, convert = commands("drafter")
    assert train == (
        "torchrun --nproc_per_node=1 -m nemo_skills.training.train_redrafter"
        " --llm_name_or_path /w/OpenMath-Nemotron-14B-kaggle --dataset /w/OpenMathReasoning"
        " --dataset_split tir --bf16 True --output_dir /w/redrafter_ --num_train_epochs 1"
        " --per_device_train_batch_size 1 --gradient_accumulation_steps 4 --save_strategy no"
        " --learning_rate 0.001 --weight_decay 0.0 --warmup_ratio 0.1"
        " --lr_scheduler_type cosine --logging_steps 20 --tf32 True --model_max_length 2048"
        " --dataset_nrows 100000 --drafter_predict_n_tokens 3 --drafter_num_layers 2"
        " --rnn True --phase train --report_to none"
    )
    # train_redrafter appends the run name to --output_dir; conversion reads that folder.
    assert convert == (
        "python /w/TensorRT-LLM/examples/redrafter/convert_checkpoint.py"
        " --base_model_checkpoint_dir /w/OpenMath-Nemotron-14B-kaggle-fp8-trtllm-tmp-ckpt"
        " --drafter_model_dir"
        " /w/redrafter__redrafter_OpenMath-Nemotron-14B-kaggle_n_3_lr_0.001_layers_2"
        " --output_dir /w/OpenMath-Nemotron-14B-kaggle-fp8-draft-ckpt --dtype bfloat16"
        " --tp_size 1 --redrafter_num_beams 1 --redrafter_draft_len_per_beam 3"
        " --redrafter_no_greedy_search"
    )
    greedy_convert = commands("drafter", drafter__greedy=True)[1]
    assert greedy_convert == convert.removesuffix(" --redrafter_no_greedy_search")


def test_engine_golden() -> None:
    assert commands("engine") == [
        "trtllm-build --checkpoint_dir /w/OpenMath-Nemotron-14B-kaggle-fp8-draft-ckpt"
        " --output_dir /w/OpenMath-Nemotron-14B-kaggle-fp8-redrafter-trtllm --gemm_plugin fp8"
        " --use_paged_context_fmha enable --max_batch_size 32 --max_seq_len 32000"
        " --max_input_len 32000 --max_num_tokens 32000"
        " --speculative_decoding_mode explicit_draft_tokens --max_beam_width 1"
        " --kv_cache_type paged"
    ]


def test_package_golden_records_every_build_command() -> None:
    (line,) = commands("package")
    argv = shlex.split(line)
    assert argv[:2] == ["python", f"{BUILD_DIR}/package_engine.py"]
    options = dict(zip(argv[2:-8:2], argv[3:-8:2], strict=True))
    assert options["--engine-dir"] == "/w/OpenMath-Nemotron-14B-kaggle-fp8-redrafter-trtllm"
    assert options["--tokenizer-dir"] == "/w/OpenMath-Nemotron-14B-kaggle"
    assert options["--output-dir"] == "/w/kaggle-dataset"
    recorded = json.loads(options["--build-args"])
    assert recorded["engine.build"] == commands("engine")[0]
    assert recorded["drafter.convert"] == commands("drafter")[1]
    assert recorded["quantize.checkpoint"] == commands("quantize")[0]
    assert argv[-8:] == [
        *("--tokenizer-glob", "*tok*", "--tokenizer-glob", "vocab.json"),
        *("--tokenizer-glob", "merges.txt", "--tokenizer-glob", "generation_config.json"),
    ]


def test_sample_config_is_the_defaults() -> None:
    # The sample file documents the defaults: the two must not drift apart.
    assert pipeline.load_pipeline_config(SAMPLE) == pipeline.load_pipeline_config(None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[engine]\nmax_batch_sizes = 4\n",
            "unknown config field 'engine.max_batch_sizes'",
        ),
        ("[engine]\nmax_batch_size = '32'\n", "engine.max_batch_size must be int"),
        ("[drafter]\ngreedy = 1\n", "drafter.greedy must be true or false"),
        ("[quantize]\nqformat = 'int4'\n", "quantize.qformat must be one of"),
        ("engine = 3\n", "'engine' is a section"),
        ("[engine\n", "not valid TOML"),
    ],
)
def test_bad_config_is_rejected(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(pipeline.PipelineError, match=message):
        pipeline.load_pipeline_config(path)


def test_dry_run_prints_every_command_and_creates_nothing(tmp_path: Path) -> None:
    config = pipeline.load_pipeline_config(SAMPLE, work_dir=str(tmp_path / "work"))
    printed: list[str] = []
    pipeline.run_pipeline(config, H100, list(pipeline.STAGES), dry_run=True, emit=printed.append)
    expected = [
        shlex.join(step.argv) for steps in pipeline.plan(config, H100).values() for step in steps
    ]
    assert [text.splitlines()[1] for text in printed] == expected
    assert not (tmp_path / "work").exists()


def test_stamp_skips_an_up_to_date_step_and_reruns_a_changed_one(tmp_path: Path) -> None:
    stamps = tmp_path / ".stamps"
    source = tmp_path / "in.txt"
    source.write_text("a")
    output = tmp_path / "out.txt"
    step = pipeline.Step("s", "copy", ("cp", str(source), str(output)), output, (source,))
    assert not pipeline.is_up_to_date(step, stamps)
    output.write_text("a")
    pipeline.write_stamp(step, stamps)
    assert pipeline.is_up_to_date(step, stamps)
    changed_args = pipeline.Step(
        "s", "copy", ("cp", "-p", str(source), str(output)), output, (source,)
    )
    assert not pipeline.is_up_to_date(changed_args, stamps)
    source.write_text("bb")  # a changed input changes the key
    assert not pipeline.is_up_to_date(step, stamps)
    pipeline.write_stamp(step, stamps)
    output.unlink()  # a missing output is never up to date
    assert not pipeline.is_up_to_date(step, stamps)


def test_submission_build_command_runs_the_pipeline_by_path(tmp_path: Path) -> None:
    import subprocess

    from submission.commands import build as build_cli

    result = subprocess.run(
        [
            *(sys.executable, "-m", "submission", "build", "--dry-run", "--stage", "engine"),
            *("--work-dir", str(tmp_path / "w"), "--config", str(SAMPLE)),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=BUILD_DIR.parent,
    )
    assert result.returncode == 0, result.stderr
    assert f"trtllm-build --checkpoint_dir {tmp_path}/w/OpenMath-Nemotron" in result.stdout
    assert "huggingface-cli" not in result.stdout  # only the stage asked for
    assert not (tmp_path / "w").exists()
    assert build_cli.PIPELINE == BUILD_DIR / "pipeline.py"

"""build/preflight.py: each check with failing inputs, and the pipeline stopping on them."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

BUILD_DIR = Path(__file__).resolve().parents[1] / "build"
sys.path.insert(0, str(BUILD_DIR))

import pipeline  # noqa: E402
import preflight  # noqa: E402

H100 = pipeline.Facts("NVIDIA H100 80GB HBM3", (9, 0), "1.0.0", True, 500.0)


@pytest.fixture
def tools_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in executables, so the tool checks see what a build box has."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ns", "torchrun", "trtllm-build"):
        exe = bin_dir / tool
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def ready_work_dir(root: Path) -> pipeline.PipelineConfig:
    """A work dir where every stage's inputs are in place and consistent."""
    config = pipeline.load_pipeline_config(None, work_dir=str(root / "work"))
    config.package.dataset_id = "me/aimo-engine-openmath-14b-fp8-redrafter"  # an owner set
    work = Path(config.work_dir)
    files = {
        f"{config.fetch.model_dir}/config.json": {"architectures": ["Qwen2ForCausalLM"]},
        f"{config.quantize.checkpoint_dir}/config.json": {"dtype": "bfloat16"},
        f"{config.drafter.checkpoint_dir}/config.json": {
            "dtype": "bfloat16",
            "redrafter_greedy_search": False,
            "redrafter_draft_len_per_beam": 3,
        },
        f"{config.engine.output_dir}/config.json": {"version": "1.0.0"},
    }
    for relative, content in files.items():
        (work / relative).parent.mkdir(parents=True, exist_ok=True)
        (work / relative).write_text(json.dumps(content))
    (work / config.calibration.output_dir).mkdir(parents=True)
    (work / config.calibration.output_dir / "data.parquet").write_bytes(b"PAR1")
    for script in ("quantization/quantize.py", "redrafter/convert_checkpoint.py"):
        (work / config.quantize.trtllm_examples_dir / script).parent.mkdir(
            parents=True, exist_ok=True
        )
        (work / config.quantize.trtllm_examples_dir / script).write_text("")
    trained = pipeline.drafter_train_dir(config)
    trained.mkdir(parents=True)
    (trained / "config.json").write_text(json.dumps({"num_draft_layers": 2, "rnn": True}))
    return config


def check(stage: str, config: pipeline.PipelineConfig, facts: pipeline.Facts = H100) -> list[str]:
    return preflight.check_stage(stage, config, facts, pipeline.resolve(config, facts))


@pytest.mark.parametrize("stage", pipeline.EXPENSIVE_STAGES)
def test_a_ready_box_passes(tmp_path: Path, tools_on_path: None, stage: str) -> None:
    assert check(stage, ready_work_dir(tmp_path)) == []


def test_the_engine_dataset_comes_from_the_one_identity(
    tmp_path: Path, tools_on_path: None
) -> None:
    """Before: pipeline.toml named `your-kaggle-user/openmath-...`, a second placeholder and a
    second name for the dataset the kernel loads from /kaggle/input/aimo-engine-...."""
    from submission.config import load_config

    kaggle = load_config("aimo3", pipeline.HARNESS_CONFIG).kaggle
    config = pipeline.load_pipeline_config(pipeline.BUILD_DIR / "pipeline.toml")
    assert config.package.dataset_id == f"{kaggle.owner}/{kaggle.engine_slug}"
    assert config.package.title == kaggle.engine_title
    production = load_config("aimo3", pipeline.HARNESS_CONFIG)
    assert production.engine.trtllm.engine_dir == f"/kaggle/input/{kaggle.engine_slug}"
    ready = ready_work_dir(tmp_path)
    ready.package.dataset_id = config.package.dataset_id  # the placeholder owner, as committed
    (problem,) = check("package", ready)
    assert "placeholder owner" in problem and "kaggle-metadata --write --id" in problem


def test_fp8_needs_ada_or_hopper(tmp_path: Path, tools_on_path: None) -> None:
    config = ready_work_dir(tmp_path)
    config.quantize.qformat = "fp8"
    a100 = pipeline.Facts("NVIDIA A100-SXM4-80GB", (8, 0), "1.0.0", True, 500.0)
    (problem,) = check("quantize", config, a100)
    assert "compute capability 8.0) has no FP8" in problem and "int8_wo" in problem
    assert any("has no FP8" in p for p in check("engine", config, a100))
    no_gpu = pipeline.Facts(None, None, "1.0.0", True, 500.0)
    assert any("no GPU compute capability" in p for p in check("quantize", config, no_gpu))
    # Ada (L4, sm_89) has FP8.
    l4 = pipeline.Facts("NVIDIA L4", (8, 9), "1.0.0", True, 500.0)
    assert check("quantize", config, l4) == []


def test_disk_room_and_tensorrt_llm_version(tmp_path: Path, tools_on_path: None) -> None:
    config = ready_work_dir(tmp_path)
    cramped = pipeline.Facts("NVIDIA H100 80GB HBM3", (9, 0), "0.18.2", True, 12.5)
    problems = check("engine", config, cramped)
    assert any("engine needs about 40 GB free" in p and "12.5 GB" in p for p in problems)
    assert any("tensorrt_llm 0.18.2 differs from the runtime's 1.0.0" in p for p in problems)
    missing = pipeline.Facts("NVIDIA H100 80GB HBM3", (9, 0), None, True, 500.0)
    assert any("tensorrt_llm is not installed" in p for p in check("quantize", config, missing))


def test_drafter_dtype_must_match_base_checkpoint(tmp_path: Path, tools_on_path: None) -> None:
    config = ready_work_dir(tmp_path)
    base = Path(config.work_dir) / config.quantize.checkpoint_dir / "config.json"
    base.write_text(json.dumps({"dtype": "float16"}))
    problems = check("drafter", config)
    assert problems == [
        "drafter.dtype bfloat16 differs from the base checkpoint's dtype float16: "
        "set drafter.dtype = 'float16'"
    ]
    config.drafter.dtype = "float16"
    assert check("drafter", config) == [
        "the drafter was trained in bfloat16 but drafter.dtype is float16"
    ]


def test_draft_length_and_layers_agree(tmp_path: Path, tools_on_path: None) -> None:
    config = ready_work_dir(tmp_path)
    config.drafter.draft_len_per_beam = 4
    assert any(
        "predict_n_tokens 3 (training) != drafter.draft_len_per_beam 4" in p
        for p in check("drafter", config)
    )
    config.drafter.draft_len_per_beam = 3
    assert preflight.check_draft_length(3, 3, 3, {"num_draft_layers": 2}) == [
        "trained drafter has 2 layers; drafter.num_layers is 3"
    ]


def test_max_input_len_covers_prompt_plus_tir_budget(tmp_path: Path, tools_on_path: None) -> None:
    config = ready_work_dir(tmp_path)
    config.engine.max_input_len = 16_000
    (problem,) = check("engine", config)
    assert "max_input_len 16000 < prompt 1024 + TIR budget 30000 = 31024" in problem
    assert preflight.check_lengths(32_000, 31_000, 1024, 30_000) == [
        "engine.max_seq_len 31000 < prompt + TIR budget = 31024",
        "engine.max_input_len 32000 > max_seq_len 31000",
    ]


def test_converted_drafter_must_decode_as_configured(tmp_path: Path, tools_on_path: None) -> None:
    config = ready_work_dir(tmp_path)
    draft = Path(config.work_dir) / config.drafter.checkpoint_dir / "config.json"
    draft.write_text(
        json.dumps({"redrafter_greedy_search": True, "redrafter_draft_len_per_beam": 3})
    )
    (problem,) = check("engine", config)
    assert "redrafter_greedy_search=True, config says greedy=False" in problem
    draft.unlink()
    assert check("engine", config) == [
        "no config.json in the drafter checkpoint: run the drafter stage first"
    ]


def test_missing_inputs_and_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = pipeline.load_pipeline_config(None, work_dir=str(tmp_path / "empty"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    problems = check("quantize", config)
    assert "`ns` is not on PATH" in problems
    assert any(p.startswith("model config not found") for p in problems)
    assert any(p.startswith("calibration data not found") for p in problems)
    problems = check("drafter", config)
    assert any("no base checkpoint config" in p for p in problems)
    assert "`torchrun` is not on PATH" in problems
    assert any(p.startswith("engine config not found") for p in check("package", config))


def test_pipeline_stops_before_a_failing_stage(tmp_path: Path, tools_on_path: None) -> None:
    config = ready_work_dir(tmp_path)
    config.engine.max_input_len = 8_000
    with pytest.raises(pipeline.PipelineError, match=r"stage 'engine' would fail[\s\S]*8000"):
        pipeline.run_pipeline(config, H100, ["engine"], emit=lambda _: None)
    assert not (Path(config.work_dir) / config.engine.output_dir / "rank0.engine").exists()


@pytest.mark.parametrize("pinned", ["0.19.0", "0.21.0", "0.17.0.post1"])
def test_a_0x_pin_stops_the_drafter_and_engine_stages(
    tmp_path: Path, tools_on_path: None, pinned: str
) -> None:
    """0.x convert_checkpoint.py has --model_dir (HF Llama), not --base_model_checkpoint_dir."""
    config = ready_work_dir(tmp_path)
    config.checks.tensorrt_llm_version = pinned
    box = pipeline.Facts("NVIDIA H100 80GB HBM3", (9, 0), pinned, True, 500.0)
    for stage in ("drafter", "engine"):
        with pytest.raises(pipeline.PipelineError, match=r"--base_model_checkpoint_dir"):
            pipeline.run_pipeline(config, box, [stage], emit=lambda _: None)
    assert pipeline.check_runtime_version("quantize", pinned) == []
    assert pipeline.check_runtime_version("drafter", "1.0.0") == []
    assert pipeline.check_runtime_version("engine", "1.2.1") == []
    (problem,) = pipeline.check_runtime_version("drafter", "latest")
    assert "not a release number" in problem


def test_the_sample_config_pins_what_offline_wheels_installs() -> None:
    config = pipeline.load_pipeline_config(BUILD_DIR / "pipeline.toml")
    pins = (BUILD_DIR.parent / "offline_wheels" / "requirements-trtllm.txt").read_text()
    assert f"tensorrt_llm=={config.checks.tensorrt_llm_version}\n" in pins
    assert pipeline.check_runtime_version("drafter", config.checks.tensorrt_llm_version) == []
    default = pipeline.PipelineConfig().checks.tensorrt_llm_version
    assert config.checks.tensorrt_llm_version == default


def test_the_drafter_is_split_as_the_quantized_checkpoint(
    tmp_path: Path, tools_on_path: None
) -> None:
    """AIMO-2's four L4s: quantize over 4 and convert the drafter with --tp_size 4, never mixed."""
    config = ready_work_dir(tmp_path)
    config.quantize.num_gpus, config.drafter.tp_size = 4, 1
    (problem,) = check("drafter", config)
    assert "quantize.num_gpus (4) and drafter.tp_size (1) differ" in problem
    config.drafter.tp_size = 4
    assert check("drafter", config) == []

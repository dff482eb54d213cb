"""build/package_engine.py for real on a stand-in engine folder, alone and as a pipeline stage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BUILD_DIR = Path(__file__).resolve().parents[1] / "build"
sys.path.insert(0, str(BUILD_DIR))

import package_engine  # noqa: E402
import pipeline  # noqa: E402

from submission.manifest import read_manifest, verify_files  # noqa: E402

# The shape of a TensorRT-LLM engine's config.json (version, pretrained_config, build_config).
ENGINE_CONFIG = {
    "version": "1.0.0",
    "pretrained_config": {
        "architecture": "ReDrafterForQWenLM",
        "dtype": "bfloat16",
        "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": None},
        "redrafter_num_layers": 2,
        "redrafter_num_beams": 1,
        "redrafter_draft_len_per_beam": 3,
        "redrafter_greedy_search": False,
    },
    "build_config": {
        "max_input_len": 32000,
        "max_seq_len": 32000,
        "max_batch_size": 32,
        "max_beam_width": 1,
        "max_num_tokens": 32000,
        "speculative_decoding_mode": 16,
        "plugin_config": {"gemm_plugin": "fp8", "use_paged_context_fmha": True},
    },
}


def stand_in(root: Path, engine_config: dict = ENGINE_CONFIG) -> tuple[Path, Path]:
    engine = root / "engine"
    engine.mkdir(parents=True)
    (engine / "config.json").write_text(json.dumps(engine_config))
    (engine / "rank0.engine").write_bytes(bytes(range(256)) * 512)
    model = root / "model"
    model.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (model / name).write_text(f'{{"name": "{name}"}}')
    (model / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    (model / "model-00001-of-00006.safetensors").write_bytes(b"weights")
    return engine, model


def test_package_writes_manifest_and_dataset_metadata(tmp_path: Path) -> None:
    engine, model = stand_in(tmp_path)
    out = tmp_path / "dataset"
    build_args = {"engine.build": "trtllm-build --gemm_plugin fp8"}
    manifest = package_engine.package_engine(
        engine, model, out, "someone/omr-14b-fp8", "OMR 14B FP8 ReDrafter", build_args=build_args
    )
    assert read_manifest(out) == manifest
    assert manifest.tensorrt_llm_version == "1.0.0"
    assert (manifest.dtype, manifest.quantization) == ("bfloat16", "fp8")
    assert manifest.speculative_decoding_mode == "explicit_draft_tokens"
    assert (manifest.greedy_drafter, manifest.draft_len_per_beam) == (False, 3)
    assert (manifest.max_seq_len, manifest.max_input_len, manifest.max_batch_size) == (
        32000,
        32000,
        32,
    )
    assert manifest.build_args == build_args
    # Engine files plus tokenizer files; the model's own config.json and weights stay out.
    assert sorted(manifest.files) == [
        "config.json",
        "merges.txt",
        "rank0.engine",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    assert json.loads((out / "config.json").read_text()) == ENGINE_CONFIG
    assert verify_files(out, manifest) == []
    assert json.loads((out / "dataset-metadata.json").read_text()) == {
        "title": "OMR 14B FP8 ReDrafter",
        "id": "someone/omr-14b-fp8",
        "licenses": [{"name": "CC-BY-4.0"}],
    }
    # Packaging again replaces its own output cleanly.
    package_engine.package_engine(engine, model, out, "someone/omr-14b-fp8", "OMR 14B FP8 ReDr")
    assert json.loads((out / "dataset-metadata.json").read_text())["title"] == "OMR 14B FP8 ReDr"
    assert not (tmp_path / "dataset.partial").exists()


def test_greedy_default_and_string_mode(tmp_path: Path) -> None:
    config = json.loads(json.dumps(ENGINE_CONFIG))
    del config["pretrained_config"]["redrafter_greedy_search"]  # the converter's default: greedy
    config["build_config"]["speculative_decoding_mode"] = "EXPLICIT_DRAFT_TOKENS"
    fields = package_engine.manifest_fields(config)
    assert fields["greedy_drafter"] is True
    assert fields["speculative_decoding_mode"] == "explicit_draft_tokens"
    plain = json.loads(json.dumps(ENGINE_CONFIG))
    plain["pretrained_config"] = {"dtype": "bfloat16"}
    del plain["build_config"]["speculative_decoding_mode"]
    fields = package_engine.manifest_fields(plain)
    assert (fields["speculative_decoding_mode"], fields["greedy_drafter"]) == ("none", False)
    assert (fields["quantization"], fields["draft_len_per_beam"]) == ("none", 0)


@pytest.mark.parametrize(
    ("dataset_id", "title", "message"),
    [
        ("no-owner", "A fine title", "OWNER/SLUG"),
        ("me/Upper_Case", "A fine title", "OWNER/SLUG"),
        ("me/ok-slug", "short", "6-50 characters"),
    ],
)
def test_bad_dataset_settings(tmp_path: Path, dataset_id: str, title: str, message: str) -> None:
    engine, model = stand_in(tmp_path)
    with pytest.raises(package_engine.PackageError, match=message):
        package_engine.package_engine(engine, model, tmp_path / "out", dataset_id, title)
    assert not (tmp_path / "out").exists()


def test_refuses_bad_inputs(tmp_path: Path) -> None:
    engine, model = stand_in(tmp_path)
    args = ("me/ok-slug", "A fine title")
    with pytest.raises(package_engine.PackageError, match=r"config\.json is missing"):
        package_engine.package_engine(tmp_path / "nope", model, tmp_path / "out", *args)
    (model / "tokenizer_config.json").unlink()
    with pytest.raises(package_engine.PackageError, match=r"no tokenizer_config\.json"):
        package_engine.package_engine(engine, model, tmp_path / "out", *args)
    (model / "tokenizer_config.json").write_text("{}")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(package_engine.PackageError, match="not an engine package"):
        package_engine.package_engine(engine, model, precious, *args)
    assert (precious / "notes.txt").read_text() == "keep me"
    (engine / "config.json").write_text('{"version": "1.0.0"}')
    with pytest.raises(package_engine.PackageError, match="lacks 'pretrained_config'"):
        package_engine.package_engine(engine, model, tmp_path / "out", *args)


def test_package_stage_through_the_pipeline(tmp_path: Path) -> None:
    """The stage runs package_engine.py as a subprocess after its preflight checks pass."""
    engine, model = stand_in(tmp_path)
    config = pipeline.load_pipeline_config(None, work_dir=str(tmp_path))
    config.python = sys.executable
    config.engine.output_dir = engine.name
    config.fetch.model_dir = model.name
    config.package.dataset_id = "me/omr-engine"
    facts = pipeline.Facts("NVIDIA H100 80GB HBM3", (9, 0), "1.0.0", True, 500.0)
    pipeline.run_pipeline(config, facts, ["package"], emit=lambda _: None)
    manifest = read_manifest(tmp_path / "kaggle-dataset")
    assert verify_files(tmp_path / "kaggle-dataset", manifest) == []
    assert manifest.build_args["engine.build"].startswith("trtllm-build --checkpoint_dir")
    assert "generation_config.json" not in manifest.files  # absent from the model: not required

"""`python -m submission doctor`: each check says ok, warn or fail for the right reason."""

from __future__ import annotations

from pathlib import Path

from submission.__main__ import main
from submission.config import load_config
from submission.manifest import EngineManifest, hash_folder, write_manifest
from submission.preflight import run_checks


def by_name(checks: list) -> dict:  # type: ignore[type-arg]
    return {check.name: check for check in checks}


def test_replay_setup_is_healthy_here() -> None:
    checks = by_name(run_checks(load_config(), sandbox=True))
    assert checks["python"].status == "ok"
    assert checks["polars"].status == "ok"
    assert checks["embedded data"].status == "ok"
    assert checks["sandbox"].status == "ok"
    assert checks["gpu"].status in {"ok", "warn"}  # a GPU is optional for replay


def test_trtllm_without_an_engine_folder_fails(tmp_path: Path) -> None:
    config = load_config(overrides=["engine.kind=trtllm", f"engine.trtllm.engine_dir={tmp_path}"])
    checks = by_name(run_checks(config, sandbox=False))
    assert checks["engine dir"].status == "fail"
    assert "no config.json" in checks["engine dir"].detail
    assert checks["tensorrt_llm"].status == "fail"  # not installable on this machine
    assert checks["gpu"].status in {"ok", "fail"}  # required for trtllm


def manifest(greedy: bool, files: dict[str, str]) -> EngineManifest:
    return EngineManifest(
        tensorrt_llm_version="0.19.0", greedy_drafter=greedy, max_seq_len=32_000,
        max_input_len=30_000, max_batch_size=32, dtype="bfloat16", quantization="fp8",
        speculative_decoding_mode="explicit_draft_tokens", draft_len_per_beam=3, files=files,
    )  # fmt: skip


def test_engine_folder_manifest_is_checked(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "rank0.engine").write_bytes(b"engine bytes")
    config = load_config(overrides=["engine.kind=trtllm", f"engine.trtllm.engine_dir={tmp_path}"])
    write_manifest(tmp_path, manifest(greedy=False, files=hash_folder(tmp_path)))
    check = by_name(run_checks(config, sandbox=False))["engine dir"]
    assert (check.status, "fp8" in check.detail) == ("ok", True)
    write_manifest(tmp_path, manifest(greedy=True, files=hash_folder(tmp_path)))
    check = by_name(run_checks(config, sandbox=False))["engine dir"]
    assert check.status == "warn" and "GREEDY" in check.detail
    (tmp_path / "rank0.engine").write_bytes(b"changed after packaging")
    check = by_name(run_checks(config, sandbox=False))["engine dir"]
    assert check.status == "fail"


def test_cli_exit_codes(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["doctor", "--no-sandbox"]) == 0
    assert "embedded data" in capsys.readouterr().out
    assert main(["doctor", "--no-sandbox", "--set", "engine.kind=trtllm"]) == 1
    assert main(["doctor", "--set", "solver.attempts=x"]) == 2


def engine_folder(root: Path, plugin: dict, mapping: dict) -> Path:
    """What trtllm-build writes that the doctor reads (config.json) plus the tokenizer files."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (root / name).write_text("{}")
    config = {
        "version": "1.0.0",
        "pretrained_config": {"architecture": "Qwen2ForCausalLM", "mapping": mapping},
        "build_config": {"max_seq_len": 32_000, "plugin_config": plugin},
    }
    (root / "config.json").write_text(json.dumps(config))
    return root


def test_the_doctor_checks_the_engine_build_against_the_run(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Issue 21 items 10 and 12: prefix reuse needs --use_paged_context_fmha enable; AIMO-2's
    four L4s want an engine split over four (tp_size 4)."""
    import submission.preflight as preflight

    monkeypatch.setattr(preflight, "_gpu_count", lambda: 4)
    no_fmha = engine_folder(tmp_path / "a", {"use_paged_context_fmha": False}, {"tp_size": 1})
    sets = ["engine.kind=trtllm", f"engine.trtllm.engine_dir={no_fmha}"]
    checks = by_name(run_checks(load_config("aimo2", overrides=sets), sandbox=False))
    assert checks["kv block reuse"].status == "warn"
    assert "--use_paged_context_fmha enable" in checks["kv block reuse"].detail
    assert checks["engine gpus"].status == "warn"
    assert "uses 1 of aimo2's 4 GPUs" in checks["engine gpus"].detail
    tp4 = engine_folder(tmp_path / "b", {"use_paged_context_fmha": True}, {"tp_size": 4})
    sets = ["engine.kind=trtllm", f"engine.trtllm.engine_dir={tp4}"]
    checks = by_name(run_checks(load_config("aimo2", overrides=sets), sandbox=False))
    assert (checks["kv block reuse"].status, checks["engine gpus"].status) == ("ok", "ok")
    monkeypatch.setattr(preflight, "_gpu_count", lambda: 1)
    checks = by_name(run_checks(load_config("aimo3", overrides=sets), sandbox=False))
    assert checks["engine gpus"].status == "fail"
    assert "split over 4 GPUs (tp_size), this machine has 1" in checks["engine gpus"].detail

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

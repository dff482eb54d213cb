"""submission.manifest: round trip, schema errors, file verification."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from submission.manifest import (
    MANIFEST_NAME,
    EngineManifest,
    ManifestError,
    hash_folder,
    read_manifest,
    verify_files,
    write_manifest,
)


def _engine_folder(root: Path) -> Path:
    root.mkdir()
    (root / "rank0.engine").write_bytes(bytes(range(256)) * 64)
    (root / "config.json").write_text('{"pretrained_config": {}}')
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text('{"model": {}}')
    return root


def _manifest(files: dict[str, str]) -> EngineManifest:
    return EngineManifest(
        tensorrt_llm_version="0.17.0.post1",
        greedy_drafter=False,
        max_seq_len=32000,
        max_input_len=30000,
        max_batch_size=32,
        dtype="bfloat16",
        quantization="fp8",
        speculative_decoding_mode="explicit_draft_tokens",
        draft_len_per_beam=3,
        build_args={"gemm_plugin": "fp8", "max_num_tokens": 32000},
        files=files,
    )


def test_hash_folder_lists_every_file_but_the_manifest(tmp_path: Path) -> None:
    root = _engine_folder(tmp_path / "engine")
    (root / MANIFEST_NAME).write_text("{}")
    hashes = hash_folder(root)
    assert set(hashes) == {"rank0.engine", "config.json", "tokenizer/tokenizer.json"}
    expected = hashlib.sha256((root / "config.json").read_bytes()).hexdigest()
    assert hashes["config.json"] == expected


def test_round_trip_and_verify_clean(tmp_path: Path) -> None:
    root = _engine_folder(tmp_path / "engine")
    manifest = _manifest(hash_folder(root))
    write_manifest(root, manifest)
    assert read_manifest(root) == manifest
    assert verify_files(root, manifest) == []
    assert not (root / (MANIFEST_NAME + ".partial")).exists()


def test_verify_reports_changed_and_missing_files(tmp_path: Path) -> None:
    root = _engine_folder(tmp_path / "engine")
    manifest = _manifest(hash_folder(root))
    (root / "config.json").write_text('{"pretrained_config": {"changed": true}}')
    (root / "tokenizer" / "tokenizer.json").unlink()
    problems = verify_files(root, manifest)
    assert len(problems) == 2
    assert any("sha256 mismatch: config.json" in p for p in problems)
    assert any("missing file: tokenizer/tokenizer.json" in p for p in problems)
    # Presence-only check skips the hash mismatch but still sees the missing file.
    assert verify_files(root, manifest, check_hashes=False) == [
        "missing file: tokenizer/tokenizer.json"
    ]


def test_verify_missing_folder(tmp_path: Path) -> None:
    assert "does not exist" in verify_files(tmp_path / "nope", _manifest({}))[0]


def test_read_missing_manifest_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="--stage package"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("greedy_drafter"), "missing field 'greedy_drafter'"),
        (lambda d: d.update(max_seq_len="32000"), "max_seq_len must be an integer"),
        (lambda d: d.update(max_batch_size=True), "max_batch_size must be an integer"),
        (lambda d: d.update(greedy_drafter=0), "greedy_drafter must be bool"),
        (lambda d: d.update(files={"a": 1}), r"files\['a'\] must be str"),
        (lambda d: d.update(files={"../escape": "00"}), "not a relative path inside"),
        (lambda d: d.update(build_args=[1]), "build_args must be an object"),
    ],
)
def test_malformed_manifest_is_rejected(tmp_path: Path, mutate, message: str) -> None:
    data = dataclasses.asdict(_manifest({"config.json": "00"}))
    mutate(data)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path)


def test_invalid_json_and_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)
    data = dataclasses.asdict(_manifest({}))
    data["written_by"] = "a newer pipeline"
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    assert read_manifest(tmp_path) == _manifest({})

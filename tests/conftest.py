"""Shared fixtures: where the project's shared data lives (CI has it; a clone may not)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip that says it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data absent ({SHARED_DATA}): these tests need the shared data set")
    return SHARED_DATA


@pytest.fixture
def tora_transcripts() -> list[Path]:
    """Both ToRA transcript files: the full ones in ../shared/data when present, else the
    first 250 generations of each that the package embeds (so these tests run everywhere)."""
    names = ("tora70b_gsm8k", "toracode34b_gsm8k")
    full = [SHARED_DATA / "transcripts" / f"{name}.jsonl" for name in names]
    if all(path.is_file() for path in full):
        return full
    from submission.config import PACKAGE_DATA

    return [PACKAGE_DATA / f"{name}_first250.jsonl" for name in names]


@pytest.fixture
def kaggle_state_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No rerun or kaggle_evaluation variables during a kernel test; sys.path, imported
    kaggle_evaluation modules and predict's configured run put back afterwards."""
    from submission import kaggle

    monkeypatch.delenv(kaggle.ENV_RERUN, raising=False)
    monkeypatch.delenv(kaggle.ENV_KAGGLE_EVALUATION_DIR, raising=False)
    before = list(sys.path)
    yield
    sys.path[:] = before
    for name in [n for n in sys.modules if n.startswith("kaggle_evaluation")]:
        del sys.modules[name]
    kaggle.configure(None)


@pytest.fixture(scope="session")
def harmony_dir() -> Path:
    """The folder with o200k_base.tiktoken and gpt-oss's tokenizer.json, checked: the cache
    folder the README's set-up command fills (`python -m submission vocab`), filled here the
    same way when it is still empty."""
    from submission.commands.vocab import prepare
    from submission.families.harmony_vocab import cache_dir

    folder = cache_dir()
    prepare(folder)  # a no-op when the files are there and check out
    return folder

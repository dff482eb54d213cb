"""Shared fixtures: where the project's shared data lives (CI has it; a clone may not)."""

from __future__ import annotations

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

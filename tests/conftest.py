"""Shared fixtures: where the real data sets live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDCORE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "heart_disease").is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}; set FEDCORE_SHARED_DATA")
    return SHARED_DATA

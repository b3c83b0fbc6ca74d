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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A `long` test is a slow test CI leaves out: it must be marked `slow` too, so that the default
    suite never runs it."""
    unmarked = [i.nodeid for i in items if i.get_closest_marker("long") and not i.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError(f"marked long but not slow: {', '.join(unmarked)}; add @pytest.mark.slow")

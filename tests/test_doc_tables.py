"""The result tables in the README and docs are rendered from benchmarks/results (a doc claim is a test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_result_table_matches_its_json() -> None:
    spec = importlib.util.spec_from_file_location("tables", ROOT / "benchmarks" / "tables.py")
    assert spec is not None and spec.loader is not None
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    assert tables.stale() == [], "run python benchmarks/tables.py"
    blocks = sum((ROOT / d).read_text().count("<!-- table:") for d in tables.DOCS if (ROOT / d).is_file())
    assert blocks >= 5  # README (2), medical README (2), survival README, docs/benchmarks.md

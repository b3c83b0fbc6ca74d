"""Results with many rows go into statistics.json in column form and read back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedcore.analytics.released import released_histogram
from fedcore.analytics.report import write_statistics_report
from fedcore.analytics.vectors import COMPACT_ROWS, column, compact, dump, head, row_count, rows_of
from fedcore.errors import ConfigError

SITES = ["a", "b", "c"]


def _rows(n: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    values = rng.integers(-3, 9, n).astype(float)
    rows: list[dict[str, object]] = [
        {"group": "all", "sites": SITES, "suppressed_at": [], "item": f"[{i}, {i + 1})",
         "value": v, "low": v - 3.0, "high": v + 3.0}
        for i, v in enumerate(values)
    ]  # fmt: skip
    rows.append({"group": "all", "sites": SITES, "suppressed_at": [], "item": "other", "value": 0.0})
    return rows


def test_small_results_keep_their_rows_and_large_ones_round_trip_in_columns() -> None:
    small = _rows(10)
    assert compact(small) == small
    rows = _rows(5 * COMPACT_ROWS)
    packed = compact(rows)
    assert isinstance(packed, dict) and packed["compact"] == len(rows)
    assert packed["shared"] == {"group": "all", "sites": SITES, "suppressed_at": []}  # written once
    result = json.loads(dump({"results": [{"name": "h", "rows": packed}]}))["results"][0]
    back = rows_of(result)
    assert back[:-1] == rows[:-1] and back[-1] == {**rows[-1], "low": None, "high": None}
    assert row_count(result) == len(rows) and head(result, 2) == rows[:2]
    assert column(result, "value") == [r["value"] for r in rows]
    assert column(result, "group") == ["all"] * len(rows)


def test_a_released_histogram_of_many_cells_reads_back_and_the_report_stays_short(tmp_path: Path) -> None:
    rows = _rows(3 * COMPACT_ROWS)
    result = {"name": "cells", "statistic": "histogram of cell", "stat": "histogram", "epsilon": 1.0,
              "noise": "under HE", "rows": compact(rows), "per_site": []}  # fmt: skip
    body = {"job_id": "j", "results": [result], "admission": {}}
    text = dump(body)
    assert len(text) < 60 * len(rows)  # no line (and indentation) per number
    (tmp_path / "statistics.json").write_text(text)
    got = released_histogram(tmp_path / "statistics.json", "cells")
    assert got.tolist() == [r["value"] for r in rows[:-1]]  # "other" left out
    report = write_statistics_report(tmp_path, json.loads(text)).read_text()
    assert f"... and {len(rows) - 40} more rows" in report and len(report.splitlines()) < 80


def test_a_suppressed_cell_in_column_form_is_not_released(tmp_path: Path) -> None:
    rows = _rows(2 * COMPACT_ROWS)
    rows[7]["value"] = None
    body = {"results": [{"name": "cells", "stat": "histogram", "rows": compact(rows)}]}
    (tmp_path / "s.json").write_text(dump(body))
    with pytest.raises(ConfigError, match="not released"):
        released_histogram(tmp_path / "s.json", "cells")

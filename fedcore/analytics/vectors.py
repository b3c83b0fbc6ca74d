"""Statistics with many rows (a histogram of 280,000 cells) in ``statistics.json``: columns, not objects.

A result's ``rows`` is a list of objects (group, item, value, low, high, ...), one per group and
item. Above :data:`COMPACT_ROWS` rows that list is stored in column form instead::

    "rows": {"compact": N, "shared": {"group": "all", "sites": [...], ...},
             "columns": {"item": [...], "value": [...], "low": [...], "high": [...]}}

``shared`` holds the keys whose value is the same in every row (written once), ``columns`` the
others, one list each in row order. :func:`rows_of` gives the rows back as objects, :func:`column`
one key's values without building them; :func:`dump` writes a body as JSON (indented unless it
holds a compact result, whose long lists would take one line per number).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["COMPACT_ROWS", "column", "compact", "dump", "head", "row_count", "rows_of"]

COMPACT_ROWS = 1000
"""A result with more rows than this is stored in column form."""


def compact(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | dict[str, Any]:
    """``rows`` as they go into ``statistics.json``: unchanged up to :data:`COMPACT_ROWS` rows, else
    in column form (keys missing from a row read back as ``None``)."""
    if len(rows) <= COMPACT_ROWS:
        return [dict(r) for r in rows]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    shared: dict[str, Any] = {}
    columns: dict[str, list[Any]] = {}
    for key in keys:
        values = [r.get(key) for r in rows]
        first = values[0]
        if all(v == first for v in values):
            shared[key] = first
        else:
            columns[key] = values
    return {"compact": len(rows), "shared": shared, "columns": columns}


def _is_compact(rows: Any) -> bool:
    return isinstance(rows, dict) and "compact" in rows


def row_count(result: Mapping[str, Any]) -> int:
    rows = result["rows"]
    return int(rows["compact"]) if _is_compact(rows) else len(rows)


def column(result: Mapping[str, Any], key: str) -> list[Any]:
    """Every row's value of ``key`` (``None`` where a row lacks it), in row order."""
    rows = result["rows"]
    if not _is_compact(rows):
        return [r.get(key) for r in rows]
    if key in rows["columns"]:
        return list(rows["columns"][key])
    return [rows["shared"].get(key)] * int(rows["compact"])


def head(result: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows as objects (a report shows a few of many)."""
    rows = result["rows"]
    if not _is_compact(rows):
        return list(rows[:n])
    count = min(n, int(rows["compact"]))
    cols = rows["columns"]
    return [{**rows["shared"], **{k: v[i] for k, v in cols.items()}} for i in range(count)]


def rows_of(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """All rows as objects, whichever form ``result`` stores them in."""
    return head(result, row_count(result))


def dump(body: Mapping[str, Any]) -> str:
    """``body`` as JSON: indented for people, unless a result holds rows in column form."""
    large = any(_is_compact(r.get("rows")) for r in body.get("results", []) if isinstance(r, dict))
    return json.dumps(body, indent=None if large else 1, default=str)

"""The rows a statistic is over: a site's table filtered, grouped, and checked against its schema.

Pure pandas over one site's typed table (``fedcore.data.load_table``); used by the site to answer
and by the simulation harness to compute the exact pooled value beside the DP answer.
Classification rules (the site schema's ``tag``): an ``identifier`` column is never queried,
filtered or grouped on; every statistic is released under DP, so ``sensitive`` and
``quasi_identifier`` columns may be queried; groups below the site's minimum cell size are
suppressed (``fedcore.analytics.site``).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from fedcore.analytics.query import Condition, QuerySpec
from fedcore.config.site import ColumnSpec, SiteConfig
from fedcore.errors import PolicyError

__all__ = [
    "bin_labels",
    "bounds_of",
    "check_query",
    "column_spec",
    "group_labels",
    "grouped_rows",
    "values_of",
]

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_NUMERIC_STATS = ("sum", "mean", "variance", "quantile")


def column_spec(site: SiteConfig, name: str, role: str) -> ColumnSpec:
    spec = next((c for c in site.columns if c.name == name), None)
    if spec is None:
        known = ", ".join(c.name for c in site.columns if c.tag != "identifier")
        raise PolicyError(f"{role} {name!r} is not a column of site {site.name!r} (columns: {known})")
    if spec.tag == "identifier":
        raise PolicyError(
            f"{role} {name!r} is an identifier column at site {site.name!r}: identifiers are never released, "
            "filtered or grouped on"
        )
    return spec


def bounds_of(query: QuerySpec, site: SiteConfig) -> tuple[float, float] | None:
    """The clamping bounds: the query's, else the schema's; never the data's (a proportion: [0, 1])."""
    if query.stat == "proportion":
        return (0.0, 1.0)
    if query.bounds is not None:
        return query.bounds
    spec = next((c for c in site.columns if c.name == query.column), None)
    return None if spec is None else spec.bounds


def check_query(query: QuerySpec, site: SiteConfig) -> None:
    """Refuse (``PolicyError``, naming the fix) a query the site's schema does not allow."""
    for cond in query.where:
        column_spec(site, cond.column, "the filter's column")
    for cond in query.of:
        column_spec(site, cond.column, "the proportion's column")
    if query.column is not None:
        spec = column_spec(site, query.column, "column")
        if query.stat in _NUMERIC_STATS or (query.stat == "histogram" and query.bins):
            if spec.type != "numeric":
                raise PolicyError(
                    f"a {query.stat} of {query.column!r} needs a numeric column, it is {spec.type}"
                )
            if bounds_of(query, site) is None and query.stat != "histogram":
                raise PolicyError(
                    f"a {query.stat} of {query.column!r} needs bounds to clamp values to: set bounds in the "
                    f"query or `bounds = [low, high]` on the column in {site.path} (never from the data)"
                )
        elif query.stat == "histogram" and spec.type != "categorical":
            raise PolicyError(
                f"a histogram of {query.column!r} needs bins (a numeric column) or levels (categorical)"
            )
    if query.by is not None:
        spec = column_spec(site, query.by, "the group-by column")
        if spec.type != "categorical" and not (query.by_bins or query.by_levels):
            raise PolicyError(
                f"group-by {query.by!r} is a {spec.type} column: declare its groups with by_bins (edges) "
                "or by_levels (values), or group on a categorical column"
            )


def _mask(frame: pd.DataFrame, where: Sequence[Condition]) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for cond in where:
        col = frame[cond.column]
        mask &= col.notna() & _OPS[cond.op](col, cond.value).fillna(False).astype(bool)
    return mask


def bin_labels(edges: Sequence[float]) -> list[str]:
    return [f"[{a:g}, {b:g})" for a, b in itertools.pairwise(edges)]


def group_labels(query: QuerySpec, site: SiteConfig) -> list[str]:
    """Every group a query reports, declared in advance (so which groups exist is never released)."""
    if query.by is None:
        return ["all"]
    if query.by_bins:
        return [f"{query.by} in {label}" for label in bin_labels(query.by_bins)]
    return [f"{query.by} = {_level(level)}" for level in _levels(query, site)]


def _level(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _levels(query: QuerySpec, site: SiteConfig) -> tuple[Any, ...]:
    assert query.by is not None
    return query.by_levels or column_spec(site, query.by, "the group-by column").levels


def filtered(query: QuerySpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows meeting the query's ``where``."""
    return frame[_mask(frame, query.where)]


def grouped_rows(query: QuerySpec, site: SiteConfig, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The filtered rows of each group (a row is in at most one group: parallel composition)."""
    rows = filtered(query, frame)
    if query.by is None:
        return {"all": rows}
    labels = group_labels(query, site)
    key = rows[query.by]
    if query.by_bins:
        index = np.digitize(key.to_numpy(float), np.asarray(query.by_bins), right=False) - 1
        return {label: rows[(index == i) & key.notna().to_numpy()] for i, label in enumerate(labels)}
    return {label: rows[key == level] for label, level in zip(labels, _levels(query, site), strict=True)}


def values_of(query: QuerySpec, rows: pd.DataFrame) -> NDArray[np.float64]:
    """The statistic's column in these rows, missing values left out (a proportion: 1 if ``of``)."""
    if query.stat == "proportion":
        known = rows[rows[[c.column for c in query.of]].notna().all(axis=1)]
        return np.asarray(_mask(known, query.of), dtype=np.float64)
    if query.column is None:
        return np.zeros(len(rows))
    col = rows[query.column]
    return np.asarray(col[col.notna()], dtype=np.float64)

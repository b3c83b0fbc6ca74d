"""Consortium terminal-risk features from a released vector of fraud counts per terminal and period.

A compromised terminal (the handbook's scenario 2) is used by customers of every bank; each bank
sees only its own customers' share of the frauds there. The banks release, per cell
``terminal_id * n_periods + tx_time_days // period_days`` (weeks by default), the number of
confirmed frauds of their customers, summed across banks (under HE, with DP noise); every bank
then derives features for its own transactions from that public vector only.

- :func:`fraud_cells` is one bank's contribution: exact counts, or with each customer's fraud
  rows bounded to ``max_per_customer`` (a uniformly random subset), so that adding or removing a
  customer changes the vector by at most ``max_per_customer`` in L1 norm (the sensitivity of a
  customer-level DP histogram).
- :func:`consortium_features` reads the released vector for a bank's rows. A row on day ``t``
  uses only periods that end before day ``t - delay_days`` (every day of the period ``<= t -
  delay - 1``): a fraud label is confirmed a while after the transaction, as the handbook's terminal
  windows assume, and a row never sees its own label.

The DP noise itself (discrete Laplace per cell, the sum across banks) is not here: it belongs to
``fedcore.analytics``. Features computed from a released vector are post-processing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcore.errors import ConfigError, SchemaError

__all__ = [
    "CONSORTIUM_FEATURES",
    "CONSORTIUM_WINDOWS_WEEKS",
    "DAYS_PER_WEEK",
    "consortium_columns",
    "consortium_features",
    "fraud_cells",
    "n_periods_for",
]

DAYS_PER_WEEK = 7
CONSORTIUM_WINDOWS_WEEKS = (1, 4)
"""Default windows, in periods of a week before the delay: the latest week, and the latest four."""


def consortium_columns(windows: Sequence[int], period_days: int = DAYS_PER_WEEK) -> tuple[str, ...]:
    """Names of the columns :func:`consortium_features` adds: ``consortium_frauds_<days>d``."""
    return tuple(f"consortium_frauds_{w * period_days}d" for w in windows)


CONSORTIUM_FEATURES: tuple[str, ...] = consortium_columns(CONSORTIUM_WINDOWS_WEEKS)
"""Columns added with the default (weekly) windows: ``consortium_frauds_7d``, ``_28d``."""

IntArray = npt.NDArray[np.int64]


def n_periods_for(n_days: int, period_days: int = DAYS_PER_WEEK) -> int:
    """Number of cells per terminal covering days ``0 .. n_days - 1``."""
    return -(-int(n_days) // period_days)


def fraud_cells(
    df_bank: pd.DataFrame,
    *,
    n_terminals: int,
    n_periods: int,
    period_days: int = DAYS_PER_WEEK,
    max_per_customer: int | None = None,
    rng: np.random.Generator | None = None,
) -> IntArray:
    """Confirmed frauds of one bank per cell ``terminal_id * n_periods + tx_time_days // period_days``.

    Parameters
    ----------
    df_bank
        One bank's rows (``customer_id``, ``terminal_id``, ``tx_time_days``, ``fraud``; ``bank``
        if present must hold one value).
    n_terminals, n_periods, period_days
        The public cell grid (the same for every bank): periods of ``period_days`` days.
    max_per_customer
        ``None``: exact counts. Otherwise each customer contributes at most this many fraud rows
        (a uniformly random subset drawn with ``rng`` when it has more), so the vector's L1
        sensitivity to one customer is ``max_per_customer``.
    rng
        Required with ``max_per_customer``.

    Raises
    ------
    SchemaError
        When a column is missing, the frame mixes banks, or a terminal or week is off the grid.
    ConfigError
        When ``max_per_customer < 1`` or it is given without ``rng``.
    """
    _check(df_bank, n_terminals, n_periods, period_days)
    frauds = df_bank[df_bank["fraud"].to_numpy() == 1]
    cell = frauds["terminal_id"].to_numpy(np.int64) * n_periods + _periods(frauds, period_days)
    if max_per_customer is not None:
        if max_per_customer < 1 or rng is None:
            raise ConfigError(
                f"max_per_customer must be >= 1 and come with an rng, got {max_per_customer} "
                f"(rng {'given' if rng is not None else 'missing'})"
            )
        cell = cell[_bounded(frauds["customer_id"].to_numpy(np.int64), max_per_customer, rng)]
    counts: IntArray = np.bincount(cell, minlength=n_terminals * n_periods).astype(np.int64)
    return counts


def consortium_features(
    df_bank: pd.DataFrame,
    cells: npt.ArrayLike,
    *,
    n_periods: int,
    period_days: int = DAYS_PER_WEEK,
    windows: Sequence[int] = CONSORTIUM_WINDOWS_WEEKS,
    delay_days: int = 7,
) -> pd.DataFrame:
    """``df_bank`` with the columns :func:`consortium_columns` names, one per window in ``windows``.

    For a row on day ``t`` at terminal ``T`` the column of window ``w`` is the sum of ``cells`` at
    ``T`` over the ``w`` latest periods whose last day is at most ``t - delay_days - 1`` (0 when
    there is none): ``consortium_frauds_<w * period_days>d``.
    Only ``cells`` (a public vector, e.g. the released noisy sum) and the row's own
    ``terminal_id`` and ``tx_time_days`` enter; other rows of ``df_bank`` do not.
    """
    vector = np.asarray(cells)
    if vector.ndim != 1 or n_periods < 1 or len(vector) % n_periods:
        raise SchemaError(f"cells must be a flat vector of n_terminals * n_periods, got shape {vector.shape}")
    if delay_days < 0 or period_days < 1 or not windows or min(windows) < 1:
        raise ConfigError(
            f"need delay_days >= 0, period_days >= 1 and windows >= 1, got {delay_days}, {period_days}, "
            f"{list(windows)}"
        )
    grid = vector.reshape(-1, n_periods).astype(np.float64)
    prefix = np.concatenate([np.zeros((len(grid), 1)), np.cumsum(grid, axis=1)], axis=1)
    terminal = df_bank["terminal_id"].to_numpy(np.int64)
    if len(terminal) and (terminal.min() < 0 or terminal.max() >= len(grid)):
        raise SchemaError(f"terminal_id outside 0..{len(grid) - 1} of the cell grid")
    day = df_bank["tx_time_days"].to_numpy(np.int64)
    # periods p < end: (p + 1) * period_days - 1 <= t - delay - 1
    end = np.clip((day - delay_days) // period_days, 0, n_periods)
    out = df_bank.copy()
    for w, name in zip(windows, consortium_columns(windows, period_days), strict=True):
        out[name] = prefix[terminal, end] - prefix[terminal, np.maximum(end - w, 0)]
    return out


def _periods(df: pd.DataFrame, period_days: int) -> IntArray:
    periods: IntArray = df["tx_time_days"].to_numpy(np.int64) // period_days
    return periods


def _bounded(customer: IntArray, limit: int, rng: np.random.Generator) -> IntArray:
    """Indices of the rows kept: at most ``limit`` per customer, a uniformly random subset."""
    order = np.lexsort((rng.random(len(customer)), customer))
    sorted_cust = customer[order]
    first = np.searchsorted(sorted_cust, sorted_cust, side="left")
    rank = np.arange(len(order)) - first
    kept: IntArray = np.sort(order[rank < limit])
    return kept


def _check(df: pd.DataFrame, n_terminals: int, n_periods: int, period_days: int) -> None:
    needed = ("customer_id", "terminal_id", "tx_time_days", "fraud")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise SchemaError(f"transactions lack column(s) {missing}; got {list(df.columns)}")
    if "bank" in df.columns and df["bank"].nunique() > 1:
        raise SchemaError(
            f"fraud_cells needs one bank's rows, got banks {sorted(df['bank'].unique().tolist())}; "
            "compute each bank's cells from its own rows and sum the vectors"
        )
    if n_terminals < 1 or n_periods < 1 or period_days < 1:
        raise ConfigError(
            "n_terminals, n_periods and period_days must be >= 1, "
            f"got {n_terminals}, {n_periods}, {period_days}"
        )
    terminal, period = df["terminal_id"].to_numpy(np.int64), _periods(df, period_days)
    off = len(df) and (terminal.min() < 0 or terminal.max() >= n_terminals or period.min() < 0)
    if off or (len(df) and period.max() >= n_periods):
        raise SchemaError(
            f"rows fall off the cell grid: terminals {terminal.min()}..{terminal.max()} (grid "
            f"{n_terminals}), periods {period.min()}..{period.max()} (grid {n_periods}); pass the full grid"
        )

"""Per-bank fraud features and the time-based train/test split of the fraud handbook.

The features are those of Le Borgne et al., "Reproducible Machine Learning for Credit Card Fraud
Detection - Practical Handbook" (2022), section 3.3 "Baseline feature transformation", computed
with prefix sums over rows sorted by (customer or terminal, time) instead of pandas rolling:

- ``tx_during_weekend`` (Saturday or Sunday) and ``tx_during_night`` (hour <= 6);
- per customer and window ``w`` in 1, 7, 30 days: the number and the mean amount of the customer's
  transactions in ``(t - w, t]``, the current one included;
- per terminal and window ``w``: the number of transactions and the fraud rate in
  ``(t - delay - w, t - delay]`` with ``delay = 7`` days, because a fraud label is only known a
  while after the transaction (0 when the window is empty).

Every function here sees one bank's rows only: :func:`bank_features` refuses a frame with more than
one bank, so no feature of a bank can depend on another bank's transactions.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcore.errors import ConfigError, SchemaError

__all__ = [
    "DELAY_DAYS",
    "FEATURES",
    "WINDOWS_DAYS",
    "bank_features",
    "features_by_bank",
    "time_split",
]

WINDOWS_DAYS = (1, 7, 30)
DELAY_DAYS = 7
_DAY = 86_400
_REQUIRED = ("customer_id", "terminal_id", "tx_datetime", "tx_time_seconds", "tx_amount", "fraud")

FEATURES: tuple[str, ...] = (
    "tx_amount",
    "tx_during_weekend",
    "tx_during_night",
    *(f"customer_id_{kind}_{w}day_window" for w in WINDOWS_DAYS for kind in ("nb_tx", "avg_amount")),
    *(f"terminal_id_{kind}_{w}day_window" for w in WINDOWS_DAYS for kind in ("nb_tx", "risk")),
)
"""The 15 model inputs, in order."""


def bank_features(df_bank: pd.DataFrame) -> pd.DataFrame:
    """One bank's transactions with the :data:`FEATURES` columns added (a new frame, same index).

    Parameters
    ----------
    df_bank
        The rows of a single bank, as :func:`~fedcore.datasets.generate_transactions` makes them
        (at least ``customer_id``, ``terminal_id``, ``tx_datetime``, ``tx_time_seconds``,
        ``tx_amount``, ``fraud``; ``bank`` if present must hold one value).

    Raises
    ------
    SchemaError
        When a required column is missing or the frame mixes banks.
    """
    _check_columns(df_bank)
    out = df_bank.copy()
    when = pd.DatetimeIndex(out["tx_datetime"])
    out["tx_during_weekend"] = (when.day_of_week >= 5).astype(np.int64)
    out["tx_during_night"] = (when.hour <= 6).astype(np.int64)
    seconds = out["tx_time_seconds"].to_numpy(np.int64)
    amount = out["tx_amount"].to_numpy(np.float64)
    fraud = out["fraud"].to_numpy(np.float64)
    customer = out["customer_id"].to_numpy(np.int64)
    terminal = out["terminal_id"].to_numpy(np.int64)
    for w in WINDOWS_DAYS:
        count, total = window_sums(customer, seconds, amount, start=w * _DAY, end=0)
        out[f"customer_id_nb_tx_{w}day_window"] = count
        out[f"customer_id_avg_amount_{w}day_window"] = total / np.maximum(count, 1)
        lag = DELAY_DAYS * _DAY
        count, frauds = window_sums(terminal, seconds, fraud, start=lag + w * _DAY, end=lag)
        out[f"terminal_id_nb_tx_{w}day_window"] = count
        out[f"terminal_id_risk_{w}day_window"] = frauds / np.maximum(count, 1)
    return out


def features_by_bank(df: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """:func:`bank_features` of every bank in ``df``, each computed from that bank's rows only."""
    if "bank" not in df.columns:
        raise SchemaError("column 'bank' is missing; got columns " + ", ".join(map(str, df.columns)))
    return {int(b): bank_features(rows) for b, rows in df.groupby("bank", sort=True)}


def window_sums(
    group: npt.NDArray[np.int64],
    seconds: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
    *,
    start: int,
    end: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Count and sum of ``values`` over same-group rows with time in ``(t - start, t - end]``.

    With ``end == 0`` the window stops at the row itself (rows with the same time that come later
    in the frame are left out, as pandas' time-based rolling does).
    """
    order = np.lexsort((np.arange(len(group)), seconds, group))
    span = int(seconds.max() - seconds.min()) + start + 1 if len(seconds) else 1
    key = group[order] * span + (seconds[order] - (seconds.min() if len(seconds) else 0))
    lo = np.searchsorted(key, key - start, side="right")
    hi = np.arange(1, len(key) + 1) if end == 0 else np.searchsorted(key, key - end, side="right")
    prefix = np.concatenate([[0.0], np.cumsum(values[order])])
    count, total = np.empty(len(key), np.int64), np.empty(len(key), np.float64)
    count[order], total[order] = hi - lo, prefix[hi] - prefix[lo]
    return count, total


def time_split(
    df: pd.DataFrame,
    *,
    train_days: int,
    delay_days: int,
    test_days: int,
    start_day: int = 0,
    drop_known_frauds: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on ``train_days`` days from ``start_day``, skip ``delay_days``, test ``test_days``.

    As ``get_train_test_set`` in the handbook's section 3.4 "Baseline fraud detection system":
    with ``drop_known_frauds`` a test transaction is dropped when its customer had a fraud known
    by then, i.e. on a day from ``start_day`` up to ``delay_days + 1`` days before it (the bank
    already blocked that card).

    Raises
    ------
    ConfigError
        When a length is out of range or the test period runs past the last day of ``df``.
    """
    _check_split(df, train_days, delay_days, test_days, start_day)
    day = df["tx_time_days"].to_numpy(np.int64)
    test_start = start_day + train_days + delay_days
    train = df[(day >= start_day) & (day < start_day + train_days)]
    in_test = (day >= test_start) & (day < test_start + test_days)
    if drop_known_frauds:
        seen = (day >= start_day) & (df["fraud"].to_numpy() == 1)
        first = df.loc[seen].groupby("customer_id")["tx_time_days"].min()
        first_fraud = df["customer_id"].map(first).to_numpy(np.float64)  # NaN: no fraud seen
        in_test &= ~(first_fraud <= day - delay_days - 1)
    return train, df[in_test]


def _check_columns(df: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise SchemaError(
            f"transactions lack column(s) {missing}; got {list(df.columns)}; "
            "pass a frame made by fedcore.datasets.generate_transactions"
        )
    if "bank" in df.columns and df["bank"].nunique() > 1:
        banks = sorted(df["bank"].unique().tolist())
        raise SchemaError(
            f"bank_features needs one bank's rows, got banks {banks}; "
            "use features_by_bank or select one bank first"
        )


def _check_split(df: pd.DataFrame, train: int, delay: int, test: int, start: int) -> None:
    problems = [
        f"{name} must be >= {low}, got {value}"
        for name, value, low in (
            ("train_days", train, 1),
            ("delay_days", delay, 0),
            ("test_days", test, 1),
            ("start_day", start, 0),
        )
        if not value >= low
    ]
    last = int(df["tx_time_days"].max()) if len(df) else -1
    if not problems and start + train + delay + test - 1 > last:
        problems.append(
            f"the test period ends on day {start + train + delay + test - 1} but the data ends on "
            f"day {last}; shorten train_days/delay_days/test_days or move start_day"
        )
    if problems:
        raise ConfigError("invalid time_split: " + "; ".join(problems))

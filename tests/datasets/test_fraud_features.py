"""Per-bank features against a pandas-rolling oracle, bank isolation, and the time split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedcore.datasets import (
    DELAY_DAYS,
    FEATURES,
    WINDOWS_DAYS,
    GeneratorConfig,
    bank_features,
    features_by_bank,
    generate_transactions,
    time_split,
)
from fedcore.errors import ConfigError, SchemaError

CONFIG = GeneratorConfig(n_customers=150, n_terminals=300, n_days=45, n_banks=3, seed=3)


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return generate_transactions(CONFIG)


def _rolling(rows: pd.DataFrame, by: str, column: str, days: int) -> pd.DataFrame:
    """The handbook's way: time-based rolling per group, the current row included."""
    out = []
    for _, group in rows.groupby(by):
        roll = group.rolling(f"{days}D", on="tx_datetime")[column]
        out.append(pd.DataFrame({"n": roll.count(), "sum": roll.sum()}, index=group.index))
    return pd.concat(out).loc[rows.index]


def test_features_are_the_15_handbook_inputs(df: pd.DataFrame) -> None:
    assert len(FEATURES) == 15 and len(set(FEATURES)) == 15
    out = bank_features(df[df["bank"] == 1])
    assert set(FEATURES) <= set(out.columns)
    assert np.isfinite(out[list(FEATURES)].to_numpy(np.float64)).all()


def test_customer_windows_match_pandas_rolling(df: pd.DataFrame) -> None:
    rows = df[df["bank"] == 1]
    out = bank_features(rows)
    for w in WINDOWS_DAYS:
        ref = _rolling(rows, "customer_id", "tx_amount", w)
        np.testing.assert_array_equal(out[f"customer_id_nb_tx_{w}day_window"], ref["n"])
        np.testing.assert_allclose(
            out[f"customer_id_avg_amount_{w}day_window"], ref["sum"] / ref["n"], rtol=1e-9
        )


def test_terminal_windows_match_pandas_rolling_with_delay(df: pd.DataFrame) -> None:
    rows = df[df["bank"] == 0]
    out = bank_features(rows)
    delayed = _rolling(rows, "terminal_id", "fraud", DELAY_DAYS)
    for w in WINDOWS_DAYS:
        both = _rolling(rows, "terminal_id", "fraud", DELAY_DAYS + w)
        n, frauds = both["n"] - delayed["n"], both["sum"] - delayed["sum"]
        risk = (frauds / n.where(n > 0)).fillna(0.0)
        np.testing.assert_array_equal(out[f"terminal_id_nb_tx_{w}day_window"], n)
        np.testing.assert_allclose(out[f"terminal_id_risk_{w}day_window"], risk, atol=1e-12)
    assert out["terminal_id_risk_30day_window"].gt(0).any()


def test_no_feature_of_a_bank_uses_another_banks_rows(df: pd.DataFrame) -> None:
    alone = bank_features(df[df["bank"] == 2])
    other = df["bank"] != 2
    mutated = df.copy()
    mutated.loc[other, "fraud"] = 1 - mutated.loc[other, "fraud"]
    mutated.loc[other, "tx_amount"] = mutated.loc[other, "tx_amount"] * 3 + 1
    mutated.loc[other, "customer_id"] = mutated.loc[other, "customer_id"] % 7  # collide ids
    for frame in (df, mutated):
        pd.testing.assert_frame_equal(features_by_bank(frame)[2], alone)
    # the check has teeth: the terminals are shared, so pooled rows would change the risk
    pooled = bank_features(df.drop(columns="bank"))
    assert not np.allclose(
        pooled.loc[alone.index, "terminal_id_nb_tx_30day_window"],
        alone["terminal_id_nb_tx_30day_window"],
    )


def test_a_frame_mixing_banks_is_refused(df: pd.DataFrame) -> None:
    with pytest.raises(SchemaError, match=r"one bank's rows, got banks \[0, 1, 2\]"):
        bank_features(df)
    with pytest.raises(SchemaError, match="fraud"):
        bank_features(df[df["bank"] == 0].drop(columns="fraud"))


def test_input_is_not_modified(df: pd.DataFrame) -> None:
    rows = df[df["bank"] == 0]
    before = rows.copy()
    bank_features(rows)
    pd.testing.assert_frame_equal(rows, before)


def test_weekend_and_night_flags() -> None:
    when = pd.to_datetime(["2018-04-06 06:59:59", "2018-04-07 07:00:00", "2018-04-08 23:00:00"])
    rows = pd.DataFrame(
        {
            "customer_id": [1, 1, 2],
            "terminal_id": [5, 5, 5],
            "tx_datetime": when,
            "tx_time_seconds": (when - pd.Timestamp("2018-04-01")) // pd.Timedelta(seconds=1),
            "tx_amount": [10.0, 30.0, 5.0],
            "fraud": [0, 1, 0],
        }
    )
    out = bank_features(rows)
    assert out["tx_during_weekend"].tolist() == [0, 1, 1]  # Friday, Saturday, Sunday
    assert out["tx_during_night"].tolist() == [1, 0, 0]
    assert out["customer_id_nb_tx_7day_window"].tolist() == [1, 2, 1]
    assert out["customer_id_avg_amount_7day_window"].tolist() == [10.0, 20.0, 5.0]
    assert out["terminal_id_nb_tx_30day_window"].tolist() == [0, 0, 0]  # all inside the delay


def _tiny() -> pd.DataFrame:
    """Customer 1 has a fraud on day 2, customer 2 on day 9; customer 3 is genuine."""
    days = np.repeat(np.arange(14), 3)
    cust = np.tile([1, 2, 3], 14)
    fraud = ((cust == 1) & (days == 2)) | ((cust == 2) & (days == 9))
    return pd.DataFrame({"customer_id": cust, "tx_time_days": days, "fraud": fraud.astype(int)})


def test_time_split_periods_and_gap() -> None:
    train, test = time_split(_tiny(), train_days=4, delay_days=3, test_days=5, start_day=1)
    assert sorted(train["tx_time_days"].unique()) == [1, 2, 3, 4]
    assert set(test["tx_time_days"].unique()) <= {8, 9, 10, 11, 12}


def test_time_split_drops_cards_known_to_be_compromised() -> None:
    _, test = time_split(_tiny(), train_days=4, delay_days=3, test_days=5, start_day=1)
    # customer 1's fraud (day 2) is known in training: none of its test rows remain;
    # customer 2's fraud on day 9 becomes known after the 3-day delay: dropped from day 13 on,
    # which is past the test period (days 8-12), so all 5 of its rows stay.
    assert (test["customer_id"] == 1).sum() == 0
    assert (test["customer_id"] == 2).sum() == 5
    assert (test["customer_id"] == 3).sum() == 5
    _, test0 = time_split(_tiny(), train_days=4, delay_days=0, test_days=9, start_day=1)
    assert test0.loc[test0["customer_id"] == 2, "tx_time_days"].tolist() == [5, 6, 7, 8, 9]
    _, kept = time_split(
        _tiny(), train_days=4, delay_days=3, test_days=5, start_day=1, drop_known_frauds=False
    )
    assert (kept["customer_id"] == 1).sum() == 5


def test_time_split_checks_its_arguments() -> None:
    with pytest.raises(ConfigError, match="ends on day 14 but the data ends on day 13"):
        time_split(_tiny(), train_days=7, delay_days=3, test_days=5)
    with pytest.raises(ConfigError, match=r"train_days must be >= 1, got 0.*delay_days"):
        time_split(_tiny(), train_days=0, delay_days=-1, test_days=1)

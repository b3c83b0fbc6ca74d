"""Consortium features: other banks enter only through the cells, the delay holds, customers are bounded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedcore.datasets import GeneratorConfig, generate_transactions
from fedcore.datasets.consortium import (
    CONSORTIUM_FEATURES,
    consortium_columns,
    consortium_features,
    fraud_cells,
    n_periods_for,
)
from fedcore.errors import ConfigError, SchemaError

CONFIG = GeneratorConfig(n_customers=300, n_terminals=200, n_days=60, n_banks=3, seed=5)
N_WEEKS = n_periods_for(CONFIG.n_days)
GRID = {"n_terminals": CONFIG.n_terminals, "n_periods": N_WEEKS}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_transactions(CONFIG)


def _bank(df: pd.DataFrame, b: int) -> pd.DataFrame:
    return df[df["bank"] == b]


def _naive(rows: pd.DataFrame, frauds: pd.DataFrame, *, weeks: int, delay: int = 7) -> np.ndarray:
    """Loop oracle: frauds at the row's terminal in the ``weeks`` latest whole weeks that end
    on a day <= t - delay - 1."""
    out = []
    for terminal, t in zip(rows["terminal_id"], rows["tx_time_days"], strict=True):
        usable = [k for k in range(N_WEEKS) if 7 * k + 6 <= t - delay - 1]
        chosen = set(usable[-weeks:]) if usable else set()
        here = frauds[frauds["terminal_id"] == terminal]
        out.append(sum(1 for d in here["tx_time_days"] if d // 7 in chosen))
    return np.array(out, dtype=np.float64)


def test_features_match_a_loop_over_every_banks_frauds(frame: pd.DataFrame) -> None:
    cells = sum(fraud_cells(_bank(frame, b), **GRID) for b in range(3))
    rows = _bank(frame, 0).iloc[::97]  # a sample of bank 0's rows, every day range
    got = consortium_features(rows, cells, n_periods=N_WEEKS)
    frauds = frame[frame["fraud"] == 1]
    for w, name in zip((1, 4), CONSORTIUM_FEATURES, strict=True):
        np.testing.assert_array_equal(got[name].to_numpy(), _naive(rows, frauds, weeks=w))


def test_other_banks_enter_only_through_the_cells(frame: pd.DataFrame) -> None:
    bank0, bank1 = _bank(frame, 0), _bank(frame, 1)
    cells = fraud_cells(bank0, **GRID) + fraud_cells(bank1, **GRID)
    before = consortium_features(bank0, cells, n_periods=N_WEEKS)
    rng = np.random.default_rng(0)
    altered = bank1.assign(fraud=rng.permutation(bank1["fraud"].to_numpy()))  # other frauds, other terminals
    new_cells = fraud_cells(bank0, **GRID) + fraud_cells(altered, **GRID)
    assert not np.array_equal(cells, new_cells)
    # with the released cells fixed, bank 1's rows cannot move bank 0's features
    pd.testing.assert_frame_equal(consortium_features(bank0, cells, n_periods=N_WEEKS), before)
    # they move only as the cells move: the features equal those of the recomputed cells
    after = consortium_features(bank0, new_cells, n_periods=N_WEEKS)
    assert not after[list(CONSORTIUM_FEATURES)].equals(before[list(CONSORTIUM_FEATURES)])
    oracle = _naive(bank0.iloc[::97], pd.concat([bank0, altered]).query("fraud == 1"), weeks=4)
    np.testing.assert_array_equal(after[CONSORTIUM_FEATURES[1]].to_numpy()[::97], oracle)
    # and a bank's own other columns are untouched
    pd.testing.assert_frame_equal(after[list(bank0.columns)], bank0)


@pytest.mark.parametrize("period_days", [1, 7])
def test_a_fraud_enters_only_after_the_delay(period_days: int) -> None:
    fraud_day, days = 20, np.arange(0, 60)
    fraud = pd.DataFrame(
        {"customer_id": [0], "terminal_id": [3], "tx_time_days": [fraud_day], "fraud": [1], "bank": [0]}
    )
    n_periods = n_periods_for(60, period_days)
    cells = fraud_cells(fraud, n_terminals=5, n_periods=n_periods, period_days=period_days)
    rows = pd.DataFrame({"terminal_id": np.full(len(days), 3), "tx_time_days": days})
    windows = (1, 30) if period_days == 1 else (1, 4)
    got = consortium_features(rows, cells, n_periods=n_periods, period_days=period_days, windows=windows)
    longest = got[consortium_columns(windows, period_days)[-1]].to_numpy()
    seen = days[longest > 0]
    period_end = (fraud_day // period_days + 1) * period_days - 1
    assert seen.min() == period_end + 8  # its period's last day is <= t - 8
    assert seen.min() - fraud_day >= 8  # a fraud on day t - 3 (or t - 7) never enters on day t
    assert not (longest[days - fraud_day <= 7]).any()


def test_customer_bounding_caps_each_customer_at_m(frame: pd.DataFrame) -> None:
    bank = _bank(frame, 0)
    frauds = bank.groupby("customer_id")["fraud"].sum()
    assert frauds.max() > 2  # the cap binds for some customer
    for m in (1, 2):
        rng = np.random.default_rng(m)
        bounded = fraud_cells(bank, **GRID, max_per_customer=m, rng=rng)
        exact = fraud_cells(bank, **GRID)
        assert (bounded <= exact).all() and (bounded >= 0).all()
        assert bounded.sum() == np.minimum(frauds, m).sum()
        for customer in frauds[frauds > 0].index[:20]:  # one customer's cells: L1 norm <= m
            one = fraud_cells(bank[bank["customer_id"] == customer], **GRID, max_per_customer=m, rng=rng)
            assert one.sum() == min(int(frauds[customer]), m)


def test_bounding_draws_a_uniform_subset() -> None:
    rows = pd.DataFrame({"customer_id": 0, "terminal_id": np.arange(4), "tx_time_days": 0, "fraud": 1})
    rng = np.random.default_rng(3)
    hits = sum(
        fraud_cells(rows, n_terminals=4, n_periods=1, max_per_customer=1, rng=rng) for _ in range(4000)
    )
    np.testing.assert_allclose(hits / 4000, 0.25, atol=0.03)  # 4 sigma of a binomial(4000, 1/4)


def test_refuses_mixed_banks_off_grid_rows_and_bad_bounds(frame: pd.DataFrame) -> None:
    with pytest.raises(SchemaError, match="one bank"):
        fraud_cells(frame, **GRID)
    with pytest.raises(SchemaError, match="off the cell grid"):
        fraud_cells(_bank(frame, 0), n_terminals=10, n_periods=N_WEEKS)
    with pytest.raises(ConfigError, match="rng"):
        fraud_cells(_bank(frame, 0), **GRID, max_per_customer=2)
    with pytest.raises(SchemaError, match="flat vector"):
        consortium_features(_bank(frame, 0), np.zeros(7), n_periods=N_WEEKS)

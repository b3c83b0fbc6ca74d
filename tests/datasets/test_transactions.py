"""The transaction simulator: determinism, banks, and the three fraud scenarios."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from fedcore.datasets import COLUMNS, GeneratorConfig, assign_banks, bank_shares
from fedcore.datasets import generate_transactions as generate
from fedcore.datasets.transactions import (
    CUSTOMER_WINDOW_DAYS,
    CUSTOMERS_PER_DAY,
    TERMINAL_WINDOW_DAYS,
    TERMINALS_PER_DAY,
    _daily_targets,
)
from fedcore.errors import ConfigError

SMALL = GeneratorConfig.small(seed=0)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return generate(SMALL)


def _fraud_plan(config: GeneratorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Re-draw the compromised terminals and customers from the generator's fraud stream."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(3)[1])
    terminals = _daily_targets(config.n_terminals, TERMINALS_PER_DAY, config.n_days, rng)
    customers = _daily_targets(config.n_customers, CUSTOMERS_PER_DAY, config.n_days, rng)
    return terminals, customers


def test_columns_order_and_types(small: pd.DataFrame) -> None:
    assert tuple(small.columns) == COLUMNS
    assert (small["transaction_id"].to_numpy() == np.arange(len(small))).all()
    assert small["tx_time_seconds"].is_monotonic_increasing
    assert (small["tx_time_days"] == small["tx_time_seconds"] // 86_400).all()
    elapsed = small["tx_datetime"] - pd.Timestamp(SMALL.start_date)
    assert (elapsed // pd.Timedelta(seconds=1) == small["tx_time_seconds"]).all()
    assert small["tx_amount"].ge(0).all()
    assert small["tx_time_days"].between(0, SMALL.n_days - 1).all()
    assert set(small["fraud"].unique()) == {0, 1}
    assert (small["fraud"] == (small["fraud_scenario"] > 0)).all()


def test_same_seed_same_frame_other_seed_differs(small: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(generate(SMALL), small)
    other = generate(GeneratorConfig.small(seed=1))
    assert len(other) != len(small) or not other.equals(small)


def test_sizes_and_fraud_rates_in_expected_ranges(small: pd.DataFrame) -> None:
    # 500 customers x 2 tx/day on average x 60 days x P(|N(0,1)| < 2.16) = 0.969 -> about 58k;
    # the per-customer rates U(0, 4) give a standard deviation of about 1.5k.
    assert 50_000 <= len(small) <= 66_000
    share = small["fraud_scenario"].value_counts(normalize=True)
    # Scenario 1: P(N(m, m/2) > 220) for m ~ U(5, 100) is about 5e-4.
    assert 1e-4 <= share.get(1, 0.0) <= 1.5e-3
    # Scenario 2: 2 terminals a day for 28 days: 2 * min(day + 1, 28) of 1000 terminals,
    # 4.3% on average over 60 days (less for repeated terminals).
    assert 0.030 <= share[2] <= 0.055
    # Scenario 3: 3 customers a day for 14 days is 7.5% of the customer-days, a third of
    # their transactions is 2.5% (less for floor(n / 3) and overlaps).
    assert 0.015 <= share[3] <= 0.032
    assert 0.045 <= small["fraud"].mean() <= 0.085


def test_every_customer_in_exactly_one_bank(small: pd.DataFrame) -> None:
    assert small.groupby("customer_id")["bank"].nunique().eq(1).all()
    assert set(small["bank"].unique()) <= set(range(SMALL.n_banks))
    assert small["terminal_id"].isin(small.loc[small["bank"] == 0, "terminal_id"]).mean() > 0.5


@pytest.mark.parametrize("skew", [0.0, 0.5, 1.0, 2.0])
def test_bank_sizes_follow_zipf_shares(skew: float) -> None:
    shares = bank_shares(4, skew)
    banks = assign_banks(1000, shares, np.random.default_rng(0))
    sizes = np.bincount(banks, minlength=4)
    assert sizes.sum() == 1000 and (sizes >= 1).all()
    assert np.abs(sizes - 1 - shares * 996).max() < 1  # one each, the rest by largest remainder
    assert (np.diff(sizes) <= 0).all()  # bank 0 is the largest
    if skew == 0.0:
        assert (sizes == 250).all()


def test_higher_skew_concentrates_customers() -> None:
    first = [bank_shares(5, skew)[0] for skew in (0.0, 0.5, 1.0, 2.0)]
    assert first[0] == pytest.approx(0.2)
    assert np.all(np.diff(first) > 0)


def test_every_bank_gets_a_customer_even_under_extreme_skew() -> None:
    banks = assign_banks(10, bank_shares(10, 50.0), np.random.default_rng(0))
    assert sorted(banks.tolist()) == list(range(10))


def test_banks_do_not_change_the_transactions(small: pd.DataFrame) -> None:
    other = generate(GeneratorConfig(**{**SMALL.__dict__, "n_banks": 7, "bank_skew": 0.0}))
    pd.testing.assert_frame_equal(other.drop(columns="bank"), small.drop(columns="bank"))
    assert other["bank"].nunique() == 7


def test_scenario_1_covers_every_amount_over_220(small: pd.DataFrame) -> None:
    over = small["tx_amount"] > 220
    assert over.any()
    assert small.loc[over, "fraud"].eq(1).all()
    assert small.loc[small["fraud_scenario"] == 1, "tx_amount"].gt(220).all()
    assert small.loc[small["fraud"] == 0, "tx_amount"].le(220).all()


def test_scenario_2_frauds_are_compromised_terminals_in_their_28_day_window(
    small: pd.DataFrame,
) -> None:
    terminals, _ = _fraud_plan(SMALL)
    in_window = np.zeros(len(small), dtype=bool)
    days, term = small["tx_time_days"].to_numpy(), small["terminal_id"].to_numpy()
    for day, picked in enumerate(terminals):  # naive loop oracle
        for t in picked:
            in_window |= (term == t) & (days >= day) & (days < day + TERMINAL_WINDOW_DAYS)
    scenario = small["fraud_scenario"].to_numpy()
    assert (in_window[scenario == 2]).all()
    assert np.isin(scenario[in_window], (2, 3)).all()  # scenario 3 may overwrite the label


def test_scenario_3_takes_a_third_of_each_window(small: pd.DataFrame) -> None:
    _, customers = _fraud_plan(SMALL)
    days, cust = small["tx_time_days"].to_numpy(), small["customer_id"].to_numpy()
    is3 = small["fraud_scenario"].to_numpy() == 3
    covered = np.zeros(len(small), dtype=bool)
    for day, picked in enumerate(customers):  # naive loop oracle
        for c in picked:
            window = (cust == c) & (days >= day) & (days < day + CUSTOMER_WINDOW_DAYS)
            covered |= window
            near = customers[max(0, day - CUSTOMER_WINDOW_DAYS + 1) : day + CUSTOMER_WINDOW_DAYS]
            if (near == c).sum() == 1:  # no overlapping window of the same customer
                assert is3[window].sum() == window.sum() // 3
    assert covered[is3].all()


def test_scenario_3_amounts_are_five_times_the_customers_usual(small: pd.DataFrame) -> None:
    genuine = small[small["fraud"] == 0].groupby("customer_id")["tx_amount"].mean()
    scen3 = small[small["fraud_scenario"] == 3].groupby("customer_id")["tx_amount"].mean()
    ratio = (scen3 / genuine).dropna()
    # A window holds a handful of draws of N(m, m/2): the mean ratio over ~100 customers is
    # 5 within a few percent; 4-6 leaves room for the noise of the small windows.
    assert len(ratio) > 50
    assert 4.0 <= ratio.median() <= 6.0


def test_bad_config_names_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        GeneratorConfig(n_customers=2, n_terminals=1, n_days=0, radius=-1.0, start_date="nope")
    message = str(info.value)
    for part in (
        "n_customers",
        "n_terminals",
        "n_days",
        "radius must be > 0, got -1.0",
        "start_date",
        "'nope'",
    ):
        assert part in message


@pytest.mark.slow
def test_one_million_transactions_in_under_a_minute() -> None:
    start = time.perf_counter()
    df = generate(GeneratorConfig(n_days=105, seed=0))
    assert time.perf_counter() - start < 60
    assert len(df) >= 1_000_000
    # the handbook reports 0.84% fraud for its defaults; 105 of its 183 days give a bit less
    assert 0.006 <= df["fraud"].mean() <= 0.010

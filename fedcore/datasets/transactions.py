"""Synthetic card transactions with fraud, spread over several banks.

fedcore's own vectorised implementation of the *published design* of the transaction simulator in
Le Borgne et al., "Reproducible Machine Learning for Credit Card Fraud Detection - Practical
Handbook" (2022), section 3.2 "Transaction data simulator" (no code is taken from it):

- customers and terminals lie uniformly on a 100 x 100 grid; a customer uses, uniformly at random,
  the terminals closer than ``radius`` (customers with none make no transactions);
- a customer has a mean amount ``m ~ U(5, 100)``, a std ``m / 2`` and a Poisson number of
  transactions per day with rate ``U(0, 4)``;
- the time within the day is ``int(N(43200, 20000))`` seconds, transactions outside ``(0, 86400)``
  are dropped; the amount is ``N(m, m / 2)``, a negative draw is replaced by ``U(0, 2 m)``;
- fraud scenario 1: every amount over 220 is fraud; scenario 2: each day 2 random terminals are
  compromised and all their transactions in the next 28 days are fraud; scenario 3: each day 3
  random customers are compromised and a third of their transactions in the next 14 days are fraud,
  with the amount multiplied by 5. Later scenarios overwrite the label of earlier ones.

fedcore adds *banks*: every customer belongs to exactly one bank, terminals are shared. Bank
``b`` (0-based) gets the share ``(b + 1) ** -bank_skew / sum_j (j + 1) ** -bank_skew`` of the
customers (Zipf's law; ``bank_skew = 0`` means equal banks), at least one customer each.

Everything is drawn from ``np.random.default_rng`` streams derived from ``seed``: the same config
gives the same frame; the banks use their own stream, so ``n_banks`` and ``bank_skew`` do not
change the transactions themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcore.errors import ConfigError

__all__ = ["COLUMNS", "GeneratorConfig", "assign_banks", "bank_shares", "generate_transactions"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

COLUMNS = (
    "transaction_id",
    "tx_datetime",
    "customer_id",
    "terminal_id",
    "bank",
    "tx_amount",
    "tx_time_seconds",
    "tx_time_days",
    "fraud",
    "fraud_scenario",
)

SECONDS_PER_DAY = 86_400
AMOUNT_THRESHOLD = 220.0  # scenario 1
TERMINALS_PER_DAY, TERMINAL_WINDOW_DAYS = 2, 28  # scenario 2
CUSTOMERS_PER_DAY, CUSTOMER_WINDOW_DAYS, CUSTOMER_AMOUNT_FACTOR = 3, 14, 5.0  # scenario 3


@dataclass(frozen=True)
class GeneratorConfig:
    """What to simulate; the defaults are the handbook's (about 1.75M transactions, 0.8% fraud).

    Parameters
    ----------
    n_customers, n_terminals
        Number of customers (at least 3 and at least ``n_banks``) and terminals (at least 2).
    n_days
        Number of simulated days, starting at ``start_date`` (ISO date, e.g. ``"2018-04-01"``).
    radius
        A customer uses the terminals closer than this on the 100 x 100 grid.
    n_banks, bank_skew
        Number of banks and the Zipf exponent of their sizes (0 = equal sizes).
    seed
        Seed of every random draw.
    compromised_terminals_per_day, compromised_customers_per_day
        Scenario 2 and 3 targets drawn each day (the handbook's 2 and 3, sized for 10,000
        terminals and 5,000 customers; a larger population keeps the handbook's fraud mix by
        scaling them with ``n_terminals`` and ``n_customers``).
    """

    n_customers: int = 5000
    n_terminals: int = 10000
    n_days: int = 183
    start_date: str = "2018-04-01"
    radius: float = 5.0
    n_banks: int = 5
    bank_skew: float = 1.0
    seed: int = 0
    compromised_terminals_per_day: int = TERMINALS_PER_DAY
    compromised_customers_per_day: int = CUSTOMERS_PER_DAY

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be >= {low}, got {value}"
            for name, value, low in (
                ("n_customers (3 and one per bank)", self.n_customers, max(3, self.n_banks)),
                ("n_terminals", self.n_terminals, 2),
                ("n_days", self.n_days, 1),
                ("n_banks", self.n_banks, 1),
                ("bank_skew", self.bank_skew, 0),
                ("seed", self.seed, 0),
                ("compromised_terminals_per_day", self.compromised_terminals_per_day, 0),
                ("compromised_customers_per_day", self.compromised_customers_per_day, 0),
            )
            if not value >= low
        ]
        if not self.radius > 0:
            problems.append(f"radius must be > 0, got {self.radius}")
        try:
            pd.Timestamp(self.start_date)
        except (TypeError, ValueError):
            problems.append(f"start_date must be an ISO date like '2018-04-01', got {self.start_date!r}")
        if problems:
            raise ConfigError("invalid GeneratorConfig: " + "; ".join(problems))

    @classmethod
    def small(cls, *, seed: int = 0, n_banks: int = 3) -> GeneratorConfig:
        """A config for tests: 500 customers, 1000 terminals, 60 days (about 60k transactions)."""
        return cls(n_customers=500, n_terminals=1000, n_days=60, n_banks=n_banks, seed=seed)


def bank_shares(n_banks: int, bank_skew: float) -> FloatArray:
    """Share of the customers of each bank: Zipf's law ``(b + 1) ** -bank_skew``, normalised."""
    weights = np.arange(1, n_banks + 1, dtype=np.float64) ** -float(bank_skew)
    shares: FloatArray = weights / weights.sum()
    return shares


def assign_banks(n_customers: int, shares: FloatArray, rng: np.random.Generator) -> IntArray:
    """Bank of every customer: one customer per bank, the rest by largest remainder, shuffled."""
    spare = n_customers - len(shares)
    exact = shares * spare
    sizes = np.floor(exact).astype(np.int64)
    short = spare - int(sizes.sum())
    sizes[np.argsort(-(exact - sizes), kind="stable")[:short]] += 1
    banks = np.repeat(np.arange(len(shares), dtype=np.int64), sizes + 1)
    shuffled: IntArray = rng.permutation(banks)
    return shuffled


def generate_transactions(config: GeneratorConfig) -> pd.DataFrame:
    """Simulate the transactions of ``config``, sorted by time, with :data:`COLUMNS`.

    ``fraud`` is 0/1, ``fraud_scenario`` is 0 (genuine) or the scenario (1-3) that made the
    transaction a fraud; ``tx_time_days`` counts days from ``start_date``.
    """
    seeds = np.random.SeedSequence(config.seed).spawn(3)
    rng_world, rng_fraud, rng_banks = (np.random.default_rng(s) for s in seeds)
    tx = _simulate(config, rng_world)
    scenario = _label_frauds(tx, config, rng_fraud)
    shares = bank_shares(config.n_banks, config.bank_skew)
    bank = assign_banks(config.n_customers, shares, rng_banks)
    return _to_frame(config, tx, bank[tx.cust], scenario)


@dataclass(frozen=True)
class _Transactions:
    """Column arrays of the simulated transactions (``amount`` may be edited in place)."""

    cust: IntArray
    day: IntArray
    seconds: IntArray  # within the day
    amount: FloatArray
    terminal: IntArray


def _simulate(config: GeneratorConfig, rng: np.random.Generator) -> _Transactions:
    """Customer and terminal profiles, then the genuine transactions sorted by time."""
    customers = rng.uniform(0.0, 100.0, size=(config.n_customers, 2))
    mean_amount = rng.uniform(5.0, 100.0, size=config.n_customers)
    rate = rng.uniform(0.0, 4.0, size=config.n_customers)
    terminals = rng.uniform(0.0, 100.0, size=(config.n_terminals, 2))
    offsets, nearby = _terminals_within(customers, terminals, config.radius)
    cust, day, seconds, amount = _draw_days(rate, mean_amount, config.n_days, rng)
    n_nearby = np.diff(offsets)[cust]
    keep = (seconds > 0) & (seconds < SECONDS_PER_DAY) & (n_nearby > 0)
    cust, day, seconds, amount = cust[keep], day[keep], seconds[keep], amount[keep]
    pick = (rng.random(len(cust)) * n_nearby[keep]).astype(np.int64)
    terminal = nearby[offsets[cust] + pick]
    order = np.argsort(day * SECONDS_PER_DAY + seconds, kind="stable")
    return _Transactions(cust[order], day[order], seconds[order], amount[order], terminal[order])


def _terminals_within(
    customers: FloatArray, terminals: FloatArray, radius: float
) -> tuple[IntArray, IntArray]:
    """Terminals strictly closer than ``radius`` to each customer, as CSR ``(offsets, indices)``.

    Customers go in blocks of about 2M customer-terminal pairs to bound the memory.
    """
    chunk = max(1, 2_000_000 // len(terminals))
    counts, indices = [], []
    for start in range(0, len(customers), chunk):
        block = customers[start : start + chunk]
        dx = block[:, :1] - terminals[None, :, 0]
        dy = block[:, 1:] - terminals[None, :, 1]
        rows, cols = np.nonzero(dx * dx + dy * dy < radius * radius)
        counts.append(np.bincount(rows, minlength=len(block)))
        indices.append(cols.astype(np.int64))
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    return offsets, np.concatenate(indices)


def _draw_days(
    rate: FloatArray, mean_amount: FloatArray, n_days: int, rng: np.random.Generator
) -> tuple[IntArray, IntArray, IntArray, FloatArray]:
    """Poisson counts per customer-day, then a time in the day and an amount per transaction."""
    counts = rng.poisson(rate[:, None], size=(len(rate), n_days))
    cell = np.repeat(np.arange(counts.size, dtype=np.int64), counts.ravel())
    cust, day = np.divmod(cell, n_days)
    seconds = rng.normal(SECONDS_PER_DAY / 2, 20_000.0, size=len(cell)).astype(np.int64)
    mean = mean_amount[cust]
    amount = rng.normal(mean, mean / 2)
    negative = amount < 0
    amount[negative] = rng.uniform(0.0, 2 * mean[negative])
    return cust, day, seconds, np.round(amount, 2)


def _label_frauds(
    tx: _Transactions, config: GeneratorConfig, rng: np.random.Generator
) -> npt.NDArray[np.int8]:
    """Fraud scenario (0-3) of every transaction; multiplies scenario-3 amounts in place."""
    cust, day, terminal, amount = tx.cust, tx.day, tx.terminal, tx.amount
    scenario = np.zeros(len(cust), dtype=np.int8)
    scenario[amount > AMOUNT_THRESHOLD] = 1
    targets = _daily_targets(config.n_terminals, config.compromised_terminals_per_day, config.n_days, rng)
    keys = _window_keys(targets, TERMINAL_WINDOW_DAYS, config.n_terminals, config.n_days)
    scenario[np.isin(day * config.n_terminals + terminal, keys)] = 2
    victims = _daily_targets(config.n_customers, config.compromised_customers_per_day, config.n_days, rng)
    third = _third_of_windows(cust * config.n_days + day, victims, config.n_days, rng)
    scenario[third] = 3
    amount[third] *= CUSTOMER_AMOUNT_FACTOR
    return scenario


def _daily_targets(n_items: int, per_day: int, n_days: int, rng: np.random.Generator) -> IntArray:
    """``(n_days, per_day)`` distinct items compromised each day."""
    rows = [rng.choice(n_items, size=per_day, replace=False) for _ in range(n_days)]
    return np.stack(rows).astype(np.int64)


def _window_keys(targets: IntArray, window: int, n_items: int, n_days: int) -> IntArray:
    """Keys ``day * n_items + item`` of every (day, item) inside a compromise window."""
    start = np.repeat(np.arange(len(targets), dtype=np.int64), targets.shape[1])
    days = start[:, None] + np.arange(window, dtype=np.int64)[None, :]
    keys = days * n_items + targets.ravel()[:, None]
    return np.unique(keys[days < n_days])


def _third_of_windows(
    cust_day: IntArray, victims: IntArray, n_days: int, rng: np.random.Generator
) -> IntArray:
    """Rows drawn as scenario-3 frauds: ``floor(n / 3)`` of each compromise window's ``n`` rows.

    ``cust_day`` is ``customer * n_days + day`` per row; a row drawn by two overlapping windows of
    the same customer is counted (and its amount multiplied) once.
    """
    order = np.argsort(cust_day, kind="stable")
    ordered = cust_day[order]
    first = np.repeat(np.arange(len(victims), dtype=np.int64), victims.shape[1])
    base = victims.ravel() * n_days
    lo = np.searchsorted(ordered, base + first, side="left")
    hi = np.searchsorted(ordered, base + np.minimum(first + CUSTOMER_WINDOW_DAYS, n_days), "left")
    sizes = hi - lo
    event = np.repeat(np.arange(len(sizes)), sizes)
    rank_in_event = np.arange(len(event)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    shuffled = np.lexsort((rng.random(len(event)), event))  # random order inside each event
    chosen = rank_in_event < (sizes // 3)[event]
    rows = (lo[event] + rank_in_event)[shuffled][chosen]
    return np.unique(order[rows])


def _to_frame(
    config: GeneratorConfig, tx: _Transactions, bank: IntArray, scenario: npt.NDArray[np.int8]
) -> pd.DataFrame:
    """Assemble the output frame (one row per transaction, ids in time order)."""
    total_seconds = tx.day * SECONDS_PER_DAY + tx.seconds
    start = np.datetime64(pd.Timestamp(config.start_date).normalize().to_datetime64(), "s")
    when = (start + total_seconds.astype("timedelta64[s]")).astype("datetime64[ns]")
    ids = np.arange(len(tx.cust), dtype=np.int64)
    columns = (ids, when, tx.cust, tx.terminal, bank, tx.amount, total_seconds, tx.day)
    labels = ((scenario > 0).astype(np.int64), scenario.astype(np.int64))
    return pd.DataFrame(dict(zip(COLUMNS, columns + labels, strict=True)))

"""Prepare hook of the finance example: one CSV of card transactions per bank, generated once.

``fedcore run examples/finance`` calls :func:`prepare` (``[tool.fedcore] prepare`` in
``pyproject.toml``) before it loads the sites. It simulates card transactions with
:mod:`fedcore.datasets` (the fraud handbook's simulator, customers spread over banks of unequal
size), computes each bank's 15 features from that bank's rows only, applies the handbook's time
split (train days, a delay gap, test days) and writes ``data/bank_<b>.csv`` with a header. The
column ``is_test`` (1 = test period) is what the site files' ``[split] column`` selects.

The job's seed draws the population (``fedcore run --seed 43`` simulates other customers,
terminals and frauds), so figures averaged over seeds (``--seeds 42-46``) average over data sets
too. The files are written again only when ``data/config.json`` (the stamp) differs from the
config asked for; the same config always gives byte-identical files.

The consortium jobs use a larger population (:data:`CONSORTIUM`, tens of thousands of customers,
so that customer-level DP has room) and extra columns: ``prepare(app_dir, seed, consortium=...)``
writes ``data/consortium/bank_<b>.csv`` with consortium terminal-risk features computed from a
cell vector: ``"exact"`` (the exact sum of every bank's daily fraud cells, columns
:data:`EXACT_FEATURES`: the non-private job) or the path of a ``.npy`` integer vector over weekly
cells (the released DP sum, columns :data:`fedcore.datasets.consortium.CONSORTIUM_FEATURES`). See
the README, "Consortium data". Consortium columns hold ``sign(x) log1p(|x|)`` of the window
counts (heavy-tailed counts, noisy ones negative too; as ``benchmarks/consortium.py`` measured).

A job names the data it needs with ``[prepare] data`` (``fedcore run`` passes it as ``data=``):
``"consortium"`` (the exact cells), ``"consortium_dp"``, ``"consortium_secagg"`` (the same as
``"consortium_dp"`` in ``data/consortium-secagg/``: its statistic is an exact sum under secure
aggregation) or ``"consortium_secagg_dp"`` (the same in ``data/consortium-secagg-dp/``: its
statistic is a secure sum with distributed DP noise). ``"consortium_dp"`` is a job with a statistics
phase (``[prepare] statistics``): before it the hook writes ``data/consortium-dp/bank_<b>.csv``
with the column :data:`CELL_COLUMN` (``terminal_id * n_periods + week``, what the banks' histogram
counts) and the consortium columns still 0 (nothing released yet); after it, called again with
``statistics=`` the batch's ``statistics.json``, it reads the released histogram
:data:`RELEASED_HISTOGRAM` back (:func:`fedcore.analytics.released.released_histogram`), rounds it
to integers, saves it as ``released_cells.npy`` and writes the CSVs with features from it. Those
CSVs hold every row of a bank, days 0-92: rows outside the train and test periods (``is_test``
and the consortium columns empty) enter the statistic (a bank counts all its confirmed frauds) and
are left out of training and testing (a row missing a feature is dropped).
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcore.analytics.released import released_histogram
from fedcore.datasets import FEATURES, GeneratorConfig, bank_features, generate_transactions, time_split
from fedcore.datasets.consortium import (
    CONSORTIUM_FEATURES,
    DAYS_PER_WEEK,
    consortium_columns,
    consortium_features,
    fraud_cells,
    n_periods_for,
)
from fedcore.errors import ConfigError

__all__ = [
    "CELL_COLUMN",
    "CONFIG",
    "CONSORTIUM",
    "DATA_NAMES",
    "EXACT_FEATURES",
    "IDENTIFIERS",
    "RELEASED_HISTOGRAM",
    "Consortium",
    "FinanceData",
    "bank_table",
    "consortium_columns_for",
    "consortium_data",
    "exact_cells",
    "prepare",
    "released_cells",
    "with_seed",
    "write_banks",
]

IDENTIFIERS = (
    "transaction_id",
    "tx_datetime",
    "customer_id",
    "terminal_id",
    "bank",
    "tx_time_seconds",
    "tx_time_days",
    "fraud_scenario",
)
"""Columns kept for audit and per-day metrics; the site files tag them ``identifier``."""

COLUMNS = (*IDENTIFIERS, "is_test", *FEATURES, "fraud")
"""Column order of every bank's CSV (the order of ``[schema.columns]`` in the site files)."""

Consortium = Literal["exact", "pending"] | Path | None
"""Which cells the consortium columns come from: none, the exact sum, a released ``.npy``, or
``"pending"`` (the DP job before its statistic is released: the cell column, consortium columns 0)."""

DATA_NAMES = ("consortium", "consortium_dp", "consortium_secagg", "consortium_secagg_dp")
"""What a job's ``[prepare] data`` may name: the exact consortium data, the DP job's, or the secure
aggregation jobs' (the DP job's columns in ``data/consortium-secagg/``, the cells an exact sum, or
in ``data/consortium-secagg-dp/``, the cells a secure sum with distributed DP noise)."""

CELL_COLUMN = "consortium_cell"
"""The DP job's cell of a row, ``terminal_id * n_periods + tx_time_days // 7``: what its histogram counts."""

RELEASED_HISTOGRAM = "consortium frauds"
"""The name of the histogram in ``queries/consortium.toml`` that the DP job's features come from."""

EXACT_WINDOWS_DAYS = (1, 7, 30)
"""Windows of the exact (non-private) consortium features: daily cells, the handbook's windows."""

EXACT_FEATURES = consortium_columns(EXACT_WINDOWS_DAYS, period_days=1)
"""``consortium_frauds_1d``, ``_7d``, ``_30d``: exact frauds of all banks at the terminal."""


def consortium_columns_for(consortium: Consortium) -> tuple[str, ...]:
    """Column order of a consortium job's CSVs (``consortium`` is ``"exact"``, ``"pending"`` or a
    released vector; the weekly ones carry the cell column the statistic counts)."""
    if consortium == "exact":
        return (*IDENTIFIERS, "is_test", *FEATURES, *EXACT_FEATURES, "fraud")
    return (*IDENTIFIERS, "is_test", CELL_COLUMN, *FEATURES, *CONSORTIUM_FEATURES, "fraud")


@dataclass(frozen=True)
class FinanceData:
    """What to generate and how to split it in time (days counted from the first simulated day).

    ``start_day`` leaves the 30-day customer windows and the delayed terminal windows time to fill.
    """

    generator: GeneratorConfig = field(
        default_factory=lambda: GeneratorConfig(
            n_customers=2000, n_terminals=4000, n_days=93, n_banks=5, bank_skew=0.5, seed=42
        )
    )
    start_day: int = 30
    train_days: int = 35
    delay_days: int = 7
    test_days: int = 21

    def stamp(self, consortium: Consortium = None) -> dict[str, Any]:
        """The JSON written next to the CSVs; a different stamp means the files are stale."""
        if consortium is None:
            return {"format": 1, "columns": list(COLUMNS), **asdict(self)}
        source = (
            consortium
            if consortium in ("exact", "pending")
            else hashlib.sha256(Path(consortium).read_bytes()).hexdigest()
        )
        columns = list(consortium_columns_for(consortium))
        return {"format": 1, "columns": columns, "cells": source, **asdict(self)}


CONFIG = FinanceData()


def consortium_data(n_customers: int = 20_000, n_terminals: int | None = None) -> FinanceData:
    """The consortium population: ``n_customers`` over five Zipf-0.5 banks, as many terminals.

    One terminal per customer gives each terminal about 2 transactions a day (the handbook's
    defaults give 1), of which a bank sees its share (14-31 %): a thin view of every terminal.
    The scenario-2 and -3 target counts scale with the population as the handbook's 2 per 10,000
    terminals and 3 per 5,000 customers a day, so the fraud mix (about 0.8 % fraud) does not
    change with the population size. Measured choices: examples/finance/README.md.
    """
    n_terminals = n_customers if n_terminals is None else n_terminals
    generator = GeneratorConfig(
        n_customers=n_customers,
        n_terminals=n_terminals,
        n_days=93,
        n_banks=5,
        bank_skew=0.5,
        seed=42,
        compromised_terminals_per_day=max(1, round(2 * n_terminals / 10_000)),
        compromised_customers_per_day=max(1, round(3 * n_customers / 5_000)),
    )
    return FinanceData(generator=generator)


CONSORTIUM = consortium_data()


def bank_table(
    df_bank: pd.DataFrame,
    data: FinanceData,
    cells: npt.NDArray[np.int64] | None = None,
    consortium: Consortium = None,
) -> pd.DataFrame:
    """One bank's train and test rows with its own features and the ``is_test`` marker.

    With ``cells`` (daily cells for ``consortium="exact"``, else a released weekly vector over
    ``terminal_id * n_periods + week``) the consortium columns are added, from ``cells`` and this
    bank's rows only.
    """
    featured = bank_features(df_bank)
    columns = COLUMNS
    if cells is not None:
        featured = consortium_features(featured, cells, **_grid(data, consortium, cells=True))
        columns = consortium_columns_for(consortium)
        names = list(EXACT_FEATURES if consortium == "exact" else CONSORTIUM_FEATURES)
        counts = featured[names].to_numpy(np.float64)
        featured[names] = np.sign(counts) * np.log1p(np.abs(counts))
    weekly = cells is not None and consortium != "exact"  # the DP job: every row enters the statistic
    if weekly:
        n_periods = n_periods_for(data.generator.n_days)
        featured[CELL_COLUMN] = featured["terminal_id"].to_numpy(np.int64) * n_periods + (
            featured["tx_time_days"].to_numpy(np.int64) // DAYS_PER_WEEK
        )
    train, test = time_split(
        featured,
        train_days=data.train_days,
        delay_days=data.delay_days,
        test_days=data.test_days,
        start_day=data.start_day,
    )
    parts = [train.assign(is_test=0), test.assign(is_test=1)]
    if weekly:
        history = featured.drop(index=train.index.union(test.index))
        parts.append(history.assign(is_test=np.nan, **{c: np.nan for c in CONSORTIUM_FEATURES}))
    table = pd.concat(parts)
    table["tx_datetime"] = table["tx_datetime"].dt.strftime("%Y-%m-%d %H:%M:%S")
    return table.loc[:, list(columns)].reset_index(drop=True)


def _grid(data: FinanceData, consortium: Consortium, *, cells: bool = False) -> dict[str, Any]:
    """Cell grid (and, with ``cells``, the feature windows) of the exact or the released vector."""
    period = 1 if consortium == "exact" else 7
    grid: dict[str, Any] = {"n_periods": n_periods_for(data.generator.n_days, period), "period_days": period}
    if cells:
        return {**grid, "windows": EXACT_WINDOWS_DAYS} if consortium == "exact" else grid
    return {"n_terminals": data.generator.n_terminals, **grid}


def exact_cells(frame: pd.DataFrame, data: FinanceData) -> npt.NDArray[np.int64]:
    """The exact sum over banks of each bank's daily fraud cells (the non-private job's input)."""
    grid = _grid(data, "exact")
    total = np.zeros(grid["n_terminals"] * grid["n_periods"], dtype=np.int64)
    for _, rows in frame.groupby("bank", sort=True):
        total += fraud_cells(rows, **grid)
    return total


def _cells(frame: pd.DataFrame, data: FinanceData, consortium: Consortium) -> npt.NDArray[np.int64] | None:
    if consortium is None:
        return None
    if consortium == "exact":
        return exact_cells(frame, data)
    size = data.generator.n_terminals * n_periods_for(data.generator.n_days)
    if consortium == "pending":
        return np.zeros(size, dtype=np.int64)
    cells = np.load(Path(consortium), allow_pickle=False)
    if cells.shape != (size,) or not np.issubdtype(cells.dtype, np.integer):
        raise ValueError(
            f"{consortium}: expected {size} integer cells (n_terminals x weeks), "
            f"got {cells.dtype} {cells.shape}"
        )
    return cells.astype(np.int64)


def write_banks(out_dir: Path, data: FinanceData = CONFIG, consortium: Consortium = None) -> list[Path]:
    """Generate and write ``bank_<b>.csv`` for every bank, then the stamp; returns the CSV paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp_file = out_dir / "config.json"
    stamp_file.unlink(missing_ok=True)  # an interrupted write leaves no valid stamp behind
    frame = generate_transactions(data.generator)
    cells = _cells(frame, data, consortium)
    paths = []
    for bank, rows in frame.groupby("bank", sort=True):
        path = out_dir / f"bank_{int(bank)}.csv"
        bank_table(rows, data, cells, consortium).to_csv(
            path, index=False, float_format="%.10g", lineterminator="\n"
        )
        paths.append(path)
    stamp_file.write_text(json.dumps(data.stamp(consortium), indent=1, sort_keys=True) + "\n")
    return paths


def is_current(out_dir: Path, data: FinanceData = CONFIG, consortium: Consortium = None) -> bool:
    """True when the stamp matches ``data`` (and the cells) and every bank's CSV is there."""
    stamp_file = out_dir / "config.json"
    if not stamp_file.is_file():
        return False
    try:
        stamp = json.loads(stamp_file.read_text())
    except json.JSONDecodeError:
        return False
    expected = json.loads(json.dumps(data.stamp(consortium)))  # tuples -> lists, as read back
    if consortium == "pending":  # a statistic reads the cell column only: any released cells will do
        stamp["cells"] = "pending"
    banks = range(data.generator.n_banks)
    return stamp == expected and all((out_dir / f"bank_{b}.csv").is_file() for b in banks)


def with_seed(seed: int, data: FinanceData = CONFIG) -> FinanceData:
    """``data`` with the generator drawing from ``seed``."""
    return replace(data, generator=replace(data.generator, seed=seed))


def prepare(
    app_dir: Path,
    seed: int | None = None,
    consortium: Consortium = None,
    data: str | None = None,
    statistics: Path | None = None,
) -> None:
    """The app's prepare hook: make ``app_dir/data/bank_*.csv`` unless they are current.

    ``seed`` (the job's seed, passed by ``fedcore run``) draws the population; None keeps
    :data:`CONFIG`'s. With ``consortium`` (``"exact"`` or a released ``.npy`` cell vector) it makes
    ``app_dir/data/consortium/bank_*.csv`` from :data:`CONSORTIUM` with the consortium columns.
    ``data`` (a job's ``[prepare] data``, one of :data:`DATA_NAMES`) chooses the same by name:
    ``"consortium"`` the exact cells, ``"consortium_dp"`` ``app_dir/data/consortium-dp/`` before
    the release, or, with ``statistics`` (the job's ``statistics.json``), from the released cells.
    """
    consortium, folder = _choice(consortium, data, statistics)
    base = CONFIG if consortium is None else CONSORTIUM
    out_dir = Path(app_dir) / "data" / folder
    data_set = base if seed is None else with_seed(seed, base)
    if statistics is not None:
        consortium = released_cells(Path(statistics), data_set, out_dir / "released_cells.npy")
    if not is_current(out_dir, data_set, consortium):
        write_banks(out_dir, data_set, consortium)


def _choice(consortium: Consortium, data: str | None, statistics: Path | None) -> tuple[Consortium, str]:
    """What :func:`prepare` writes (the cells, before any statistic) and in which folder of ``data/``."""
    if data is None:
        if statistics is not None:
            raise ConfigError(
                'prepare: released statistics are only used by [prepare] data = "consortium_dp"; '
                "add it to the job"
            )
        return consortium, "" if consortium is None else "consortium"
    if data not in DATA_NAMES or consortium is not None:
        raise ConfigError(
            f"prepare: [prepare] data must be one of {list(DATA_NAMES)}, got {data!r}"
            + (f" (with consortium={consortium!r}: give one of the two)" if consortium is not None else "")
        )
    if data == "consortium":
        if statistics is not None:
            raise ConfigError(
                '[prepare] data = "consortium" uses the exact cells: drop [prepare] statistics, or use '
                '"consortium_dp"'
            )
        return "exact", "consortium"
    return "pending", data.replace("_", "-")


def released_cells(statistics: Path, data: FinanceData, out: Path) -> Path:
    """The released histogram :data:`RELEASED_HISTOGRAM` as integer cells in ``out`` (a ``.npy``).

    The noisy counts are rounded (they are integers already under the discrete Laplace; the
    decrypted HE sum is read back as floats) and kept signed: post-processing of the release.
    ``ConfigError`` when the histogram is missing, suppressed, or not the cell grid's size.
    """
    values = released_histogram(statistics, RELEASED_HISTOGRAM)
    size = data.generator.n_terminals * n_periods_for(data.generator.n_days)
    if values.shape != (size,):
        raise ConfigError(
            f"{statistics}: {RELEASED_HISTOGRAM!r} has {values.size} bins, the cell grid "
            f"{data.generator.n_terminals} terminals x {n_periods_for(data.generator.n_days)} weeks has "
            f"{size}; make the query's bins {{ start = 0, stop = {size}, width = 1 }}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, np.rint(values).astype(np.int64), allow_pickle=False)
    return out


if __name__ == "__main__":
    prepare(Path(__file__).resolve().parent)

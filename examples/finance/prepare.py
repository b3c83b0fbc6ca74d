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
the README, "Consortium data".
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcore.datasets import FEATURES, GeneratorConfig, bank_features, generate_transactions, time_split
from fedcore.datasets.consortium import (
    CONSORTIUM_FEATURES,
    consortium_columns,
    consortium_features,
    fraud_cells,
    n_periods_for,
)

__all__ = [
    "CONFIG",
    "CONSORTIUM",
    "EXACT_FEATURES",
    "IDENTIFIERS",
    "Consortium",
    "FinanceData",
    "bank_table",
    "consortium_columns_for",
    "consortium_data",
    "exact_cells",
    "prepare",
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

Consortium = Literal["exact"] | Path | None
"""Which cells the consortium columns come from: none, the exact sum, or a released ``.npy``."""

EXACT_WINDOWS_DAYS = (1, 7, 30)
"""Windows of the exact (non-private) consortium features: daily cells, the handbook's windows."""

EXACT_FEATURES = consortium_columns(EXACT_WINDOWS_DAYS, period_days=1)
"""``consortium_frauds_1d``, ``_7d``, ``_30d``: exact frauds of all banks at the terminal."""


def consortium_columns_for(consortium: Consortium) -> tuple[str, ...]:
    """Column order of a consortium job's CSVs (``consortium`` is ``"exact"`` or a released vector)."""
    extra = EXACT_FEATURES if consortium == "exact" else CONSORTIUM_FEATURES
    return (*IDENTIFIERS, "is_test", *FEATURES, *extra, "fraud")


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
            "exact" if consortium == "exact" else hashlib.sha256(Path(consortium).read_bytes()).hexdigest()
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
    train, test = time_split(
        featured,
        train_days=data.train_days,
        delay_days=data.delay_days,
        test_days=data.test_days,
        start_day=data.start_day,
    )
    table = pd.concat([train.assign(is_test=0), test.assign(is_test=1)])
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
    cells = np.load(Path(consortium), allow_pickle=False)
    size = data.generator.n_terminals * n_periods_for(data.generator.n_days)
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
    banks = range(data.generator.n_banks)
    return stamp == expected and all((out_dir / f"bank_{b}.csv").is_file() for b in banks)


def with_seed(seed: int, data: FinanceData = CONFIG) -> FinanceData:
    """``data`` with the generator drawing from ``seed``."""
    return replace(data, generator=replace(data.generator, seed=seed))


def prepare(app_dir: Path, seed: int | None = None, consortium: Consortium = None) -> None:
    """The app's prepare hook: make ``app_dir/data/bank_*.csv`` unless they are current.

    ``seed`` (the job's seed, passed by ``fedcore run``) draws the population; None keeps
    :data:`CONFIG`'s. With ``consortium`` (``"exact"`` or a released ``.npy`` cell vector) it makes
    ``app_dir/data/consortium/bank_*.csv`` from :data:`CONSORTIUM` with the consortium columns.
    """
    base = CONFIG if consortium is None else CONSORTIUM
    out_dir = Path(app_dir) / "data" / ("consortium" if consortium is not None else "")
    data = base if seed is None else with_seed(seed, base)
    if not is_current(out_dir, data, consortium):
        write_banks(out_dir, data, consortium)


if __name__ == "__main__":
    prepare(Path(__file__).resolve().parent)

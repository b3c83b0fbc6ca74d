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
"""

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from fedcore.datasets import FEATURES, GeneratorConfig, bank_features, generate_transactions, time_split

__all__ = ["CONFIG", "IDENTIFIERS", "FinanceData", "bank_table", "prepare", "with_seed", "write_banks"]

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

    def stamp(self) -> dict[str, Any]:
        """The JSON written next to the CSVs; a different stamp means the files are stale."""
        return {"format": 1, "columns": list(COLUMNS), **asdict(self)}


CONFIG = FinanceData()


def bank_table(df_bank: pd.DataFrame, data: FinanceData) -> pd.DataFrame:
    """One bank's train and test rows with its own features and the ``is_test`` marker."""
    featured = bank_features(df_bank)
    train, test = time_split(
        featured,
        train_days=data.train_days,
        delay_days=data.delay_days,
        test_days=data.test_days,
        start_day=data.start_day,
    )
    table = pd.concat([train.assign(is_test=0), test.assign(is_test=1)])
    table["tx_datetime"] = table["tx_datetime"].dt.strftime("%Y-%m-%d %H:%M:%S")
    return table.loc[:, list(COLUMNS)].reset_index(drop=True)


def write_banks(out_dir: Path, data: FinanceData = CONFIG) -> list[Path]:
    """Generate and write ``bank_<b>.csv`` for every bank, then the stamp; returns the CSV paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp_file = out_dir / "config.json"
    stamp_file.unlink(missing_ok=True)  # an interrupted write leaves no valid stamp behind
    frame = generate_transactions(data.generator)
    paths = []
    for bank, rows in frame.groupby("bank", sort=True):
        path = out_dir / f"bank_{int(bank)}.csv"
        bank_table(rows, data).to_csv(path, index=False, float_format="%.10g", lineterminator="\n")
        paths.append(path)
    stamp_file.write_text(json.dumps(data.stamp(), indent=1, sort_keys=True) + "\n")
    return paths


def is_current(out_dir: Path, data: FinanceData = CONFIG) -> bool:
    """True when the stamp matches ``data`` and every bank's CSV is there."""
    stamp_file = out_dir / "config.json"
    if not stamp_file.is_file():
        return False
    try:
        stamp = json.loads(stamp_file.read_text())
    except json.JSONDecodeError:
        return False
    expected = json.loads(json.dumps(data.stamp()))  # tuples -> lists, as read back
    banks = range(data.generator.n_banks)
    return stamp == expected and all((out_dir / f"bank_{b}.csv").is_file() for b in banks)


def with_seed(seed: int, data: FinanceData = CONFIG) -> FinanceData:
    """``data`` with the generator drawing from ``seed``."""
    return replace(data, generator=replace(data.generator, seed=seed))


def prepare(app_dir: Path, seed: int | None = None) -> None:
    """The app's prepare hook: make ``app_dir/data/bank_*.csv`` unless they are current.

    ``seed`` (the job's seed, passed by ``fedcore run``) draws the population; None keeps
    :data:`CONFIG`'s.
    """
    out_dir = Path(app_dir) / "data"
    data = CONFIG if seed is None else with_seed(seed)
    if not is_current(out_dir, data):
        write_banks(out_dir, data)


if __name__ == "__main__":
    prepare(Path(__file__).resolve().parent)

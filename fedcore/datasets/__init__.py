"""Synthetic data sets for the examples: card transactions with fraud, split over banks.

See ``README.md`` in this folder for the simulator's design and the features.
"""

from __future__ import annotations

from fedcore.datasets.consortium import (
    CONSORTIUM_FEATURES,
    consortium_columns,
    consortium_features,
    fraud_cells,
    n_periods_for,
)
from fedcore.datasets.fraud_features import (
    DELAY_DAYS,
    FEATURES,
    WINDOWS_DAYS,
    bank_features,
    features_by_bank,
    time_split,
)
from fedcore.datasets.transactions import (
    COLUMNS,
    GeneratorConfig,
    assign_banks,
    bank_shares,
    generate_transactions,
)

__all__ = [
    "COLUMNS",
    "CONSORTIUM_FEATURES",
    "DELAY_DAYS",
    "FEATURES",
    "WINDOWS_DAYS",
    "GeneratorConfig",
    "assign_banks",
    "bank_features",
    "bank_shares",
    "consortium_columns",
    "consortium_features",
    "features_by_bank",
    "fraud_cells",
    "generate_transactions",
    "n_periods_for",
    "time_split",
]

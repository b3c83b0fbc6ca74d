"""Conversions between fedcore values and Flower records."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from fedcore.aggregators.base import Arrays

__all__ = ["arrays_from_record", "arrays_to_record", "as_int", "config_json", "metrics_record"]


def arrays_to_record(arrays: Arrays) -> ArrayRecord:
    """Send parameters as float32 (what the model holds); math stays float64 at both ends."""
    return ArrayRecord([np.asarray(a, dtype=np.float32) for a in arrays])


def arrays_from_record(record: ArrayRecord) -> Arrays:
    return tuple(np.asarray(a, dtype=np.float64) for a in record.to_numpy_ndarrays())


def config_json(config: ConfigRecord, key: str) -> Any:
    return json.loads(str(config[key]))


def metrics_record(metrics: Mapping[str, float]) -> MetricRecord:
    return MetricRecord({k: float(v) for k, v in metrics.items()})


def as_int(value: Any) -> int:
    """A config value Flower types loosely, as an int (fails loudly on anything else)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"expected an integer config value, got {value!r}")
    return int(value)

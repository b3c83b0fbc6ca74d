"""Conversions between fedcore values and Flower records."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedcore.aggregators.base import Arrays
from fedcore.errors import CiphertextError

__all__ = [
    "arrays_from_record",
    "arrays_to_record",
    "as_int",
    "config_json",
    "metrics_record",
    "opaque_from_record",
    "opaque_to_record",
    "site_reply",
]


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


HE_STYPE = "fedcore.he.v1"


def opaque_to_record(data: bytes, key: str = "he", record: ArrayRecord | None = None) -> ArrayRecord:
    """Ciphertext bytes as one opaque Array under ``key`` (Flower chunks large Arrays at 5 MiB)."""
    record = ArrayRecord() if record is None else record
    record[key] = Array(dtype="bytes", shape=(len(data),), stype=HE_STYPE, data=data)
    return record


def opaque_from_record(record: ArrayRecord, key: str = "he") -> bytes:
    arr = record.get(key, None)
    if arr is None or arr.stype != HE_STYPE:
        raise CiphertextError(
            "expected an HE ciphertext (stype fedcore.he.v1) but got plaintext arrays; the "
            "coordinator and the site disagree on whether HE is on for this job"
        )
    return bytes(arr.data)


def site_reply(
    msg: Message,
    site: str,
    audit_head: tuple[int, str],
    records: Mapping[str, ArrayRecord | ConfigRecord | MetricRecord],
) -> Message:
    """A site's reply: ``records`` plus who answered and the head of its audit log (kept by the
    coordinator, outside the site, so a rewrite of the site's log can be detected later)."""
    info = ConfigRecord({"site": site, "audit-head": f"{audit_head[0]} {audit_head[1]}"})
    return Message(RecordDict({**records, "site": info}), reply_to=msg)

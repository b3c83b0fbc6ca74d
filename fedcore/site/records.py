"""The ledger's record types (a budget decision, a charge, per-dataset and whole-ledger summaries)
and the two encodings every table of a site's SQLite files shares (UTC time, composed events)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from dp_accounting.dp_event import ComposedDpEvent, DpEvent

from fedcore.privacy.accounting import event_to_json

__all__ = [
    "ChargeRecord",
    "DatasetSummary",
    "Decision",
    "LedgerSummary",
    "ReleaseKind",
    "RunningTotal",
    "events_json",
    "now_iso",
]


ReleaseKind = Literal["train", "evaluate", "query"]


@dataclass(frozen=True)
class Decision:
    """Whether planned events fit a dataset's budget (all epsilons at the budget's ``delta``)."""

    allowed: bool
    dataset: str
    requested_epsilon: float
    spent_epsilon: float
    projected_epsilon: float
    budget_epsilon: float
    delta: float
    reason: str

    @property
    def remaining_epsilon(self) -> float:
        """Budget left before the planned work."""
        return max(0.0, self.budget_epsilon - self.spent_epsilon)


@dataclass(frozen=True)
class ChargeRecord:
    """One accepted charge; ``epsilon`` is this charge alone at ``delta`` (for reports)."""

    id: int
    time: str
    job_id: str
    dataset: str
    event_json: str
    epsilon: float
    delta: float
    accountant: str


@dataclass(frozen=True)
class RunningTotal:
    """Where the ledger stands after one charge: its dataset's charges so far and its job's charges
    so far, each composed by the ledger's accountant (not summed: ``fedcore ledger`` shows both)."""

    charge_id: int
    dataset_epsilon: float
    job_epsilon: float


@dataclass(frozen=True)
class DatasetSummary:
    """Budget and spending of one dataset."""

    dataset: str
    budget_epsilon: float
    delta: float
    spent_epsilon: float
    remaining_epsilon: float
    num_charges: int


@dataclass(frozen=True)
class LedgerSummary:
    """What ``fedcore ledger SITE`` prints."""

    site: str
    path: str
    datasets: tuple[DatasetSummary, ...]
    charges: tuple[ChargeRecord, ...]
    audit_head: tuple[int, str]


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def events_json(events: Sequence[DpEvent]) -> str:
    if not events:
        return ""
    return event_to_json(events[0] if len(events) == 1 else ComposedDpEvent(list(events)))

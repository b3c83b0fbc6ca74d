"""FedAvg and FedProx: the weighted mean of the sites' deltas."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedcore.aggregators._math import weighted_mean
from fedcore.aggregators.base import AggregateResult, Arrays, ClientUpdate

__all__ = ["FedAvg"]


@dataclass(frozen=True)
class FedAvg:
    """Federated averaging (McMahan et al. 2017): step = sum_k (n_k / n) delta_k.

    FedProx (Li et al. 2020) is FedAvg at the server plus a proximal term ``mu/2 ||w - w_t||^2``
    in each site's local objective: select it with ``aggregator = "fedprox"`` and the job's
    ``[train] proximal_mu``. ``server_lr`` scales the averaged step (1.0 is plain FedAvg).
    """

    server_lr: float = 1.0

    def __post_init__(self) -> None:
        if not self.server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {self.server_lr}")

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        return self.apply_mean(weighted_mean(updates), server_round=server_round)

    def apply_mean(self, mean_delta: Arrays, *, server_round: int) -> AggregateResult:
        return AggregateResult(step=tuple(self.server_lr * d for d in mean_delta))

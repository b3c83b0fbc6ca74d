"""The algorithms' server parts hold the aggregator contract (``fedcore.testing``): SCAFFOLD's and
FedDyn's around FedAvg, and FedNova with step counts that grow with the example counts (the case of
issue 24: its step legitimately depends on the counts, so it declares ``weights = "counts"``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from fedcore.aggregators import AggregateResult, Aggregator, ClientUpdate, FedAvg
from fedcore.algorithms import FedDyn, FedNova, Scaffold
from fedcore.algorithms.fednova import steps_norm
from fedcore.errors import AggregationError
from fedcore.testing import AggregatorContract, random_updates


class _Sending:
    """What the sites of an algorithm would send beside each delta, then the algorithm's server."""

    def __init__(self, server: Aggregator, extra: str, value: object) -> None:
        self.server, self.extra, self.value = server, extra, value

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        sent = [replace(u, extras={self.extra: self.value(u)}) for u in updates]  # type: ignore[operator]
        return self.server.aggregate(sent, server_round=server_round)

    def state_arrays(self):  # type: ignore[no-untyped-def]
        return self.server.state_arrays()  # type: ignore[attr-defined]

    def load_state_arrays(self, state) -> None:  # type: ignore[no-untyped-def]
        self.server.load_state_arrays(state)  # type: ignore[attr-defined]


class TestScaffoldServer(AggregatorContract):
    def make(self) -> Aggregator:
        return _Sending(
            Scaffold().server(FedAvg(), num_sites=5), "control_delta", lambda u: tuple(-d for d in u.delta)
        )


class TestFedDynServer(AggregatorContract):
    mean_preserving = False  # theta+ = mean - h / alpha

    def make(self) -> Aggregator:
        return FedDyn(alpha=0.1).server(FedAvg(), num_sites=5)


class TestFedNovaServer(AggregatorContract):
    weights = "counts"  # tau_i = ceil(n_i / 16), one epoch at batch 16: the counts themselves change the step

    def make(self) -> Aggregator:
        return _Sending(
            FedNova().server(FedAvg(), num_sites=5),
            "steps",
            lambda u: (np.array([math.ceil(u.num_examples / 16)]),),
        )


def test_fednova_equal_steps_is_fedavg() -> None:
    ups = random_updates(4)
    same = [replace(u, extras={"steps": (np.array([7.0]),)}) for u in ups]
    nova = FedNova().server(FedAvg(), num_sites=4).aggregate(same, server_round=1)
    avg = FedAvg().aggregate(ups, server_round=1)
    assert all(np.allclose(a, b) for a, b in zip(nova.step, avg.step, strict=True))
    assert nova.metrics["fednova_tau_eff"] == pytest.approx(7.0)


def test_steps_norm_with_a_proximal_term_is_the_sum_of_its_coefficients() -> None:
    lr, mu, tau = 0.1, 0.5, 9
    assert steps_norm(tau, lr=lr, proximal_mu=mu) == pytest.approx(
        sum((1 - lr * mu) ** k for k in range(tau))
    )
    assert steps_norm(tau, lr=lr, proximal_mu=0.0) == tau


def test_a_missing_extra_is_refused_naming_the_site() -> None:
    ups = random_updates(3)
    with pytest.raises(AggregationError, match="site 'site-0' sent no extra 'control_delta'"):
        Scaffold().server(FedAvg(), num_sites=3).aggregate(ups, server_round=1)

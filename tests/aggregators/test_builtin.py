"""Every built-in aggregator passes the contract suite; the math matches naive oracles."""

from __future__ import annotations

import numpy as np
import pytest

from fedcore.aggregators import (
    ClientUpdate,
    CoordinateMedian,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedYogi,
    aggregator_names,
    make_aggregator,
    register_aggregator,
)
from fedcore.errors import UnknownNameError
from fedcore.testing import AggregatorContract, random_updates


class TestFedAvg(AggregatorContract):
    def make(self) -> FedAvg:
        return FedAvg()


class TestFedAdam(AggregatorContract):
    mean_preserving = False

    def make(self):  # type: ignore[no-untyped-def]
        return FedAdam(server_lr=0.1)


class TestFedYogi(AggregatorContract):
    mean_preserving = False

    def make(self):  # type: ignore[no-untyped-def]
        return FedYogi(server_lr=0.1)


class TestFedAdagrad(AggregatorContract):
    mean_preserving = False

    def make(self):  # type: ignore[no-untyped-def]
        return FedAdagrad(server_lr=0.1)


class TestMedian(AggregatorContract):
    mean_preserving = False
    weights = "ignored"

    def make(self) -> CoordinateMedian:
        return CoordinateMedian()


def test_fedavg_matches_naive_loop() -> None:
    ups = random_updates(6, seed=3)
    total = sum(u.num_examples for u in ups)
    expected = [sum(u.num_examples * u.delta[i] for u in ups) / total for i in range(2)]
    step = FedAvg().aggregate(ups, server_round=1).step
    for s, e in zip(step, expected, strict=True):
        np.testing.assert_allclose(s, e, rtol=1e-12)


@pytest.mark.parametrize("kind", ["adam", "yogi", "adagrad"])
def test_fedopt_matches_scalar_oracle(kind: str) -> None:
    """Two rounds of the vectorised optimizer against a scalar loop of Reddi et al. Alg. 2."""
    lr, b1, b2, tau = 0.05, 0.9, 0.99, 1e-3
    agg = make_aggregator("fed" + kind, server_lr=lr, beta1=b1, beta2=b2, tau=tau)
    rounds = [random_updates(3, seed=s, shapes=((4,),)) for s in (1, 2)]
    m = v = np.zeros(4)
    for r, ups in enumerate(rounds, start=1):
        total = sum(u.num_examples for u in ups)
        d = sum(u.num_examples * u.delta[0] for u in ups) / total
        m = b1 * m + (1 - b1) * d
        if kind == "adam":
            v = b2 * v + (1 - b2) * d**2
        elif kind == "yogi":
            v = v - (1 - b2) * d**2 * np.sign(v - d**2)
        else:
            v = v + d**2
        expected = lr * m / (np.sqrt(v) + tau)
        np.testing.assert_allclose(agg.aggregate(ups, server_round=r).step[0], expected)


def test_registry_lists_builtins_and_rejects_unknown() -> None:
    assert {"fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "median"} <= set(aggregator_names())
    with pytest.raises(UnknownNameError, match=r"known aggregators: .*fedavg"):
        make_aggregator("fedmagic")
    with pytest.raises(UnknownNameError, match="does not accept options"):
        make_aggregator("fedavg", momentum=0.9)


def test_register_refuses_silent_overwrite() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_aggregator("fedavg", CoordinateMedian)


def test_client_update_is_frozen_copy() -> None:
    arr = np.ones(3)
    u = ClientUpdate(delta=(arr,), num_examples=1)
    arr[0] = 5.0
    assert u.delta[0][0] == 1.0
    with pytest.raises(ValueError):
        u.delta[0][0] = 2.0

"""Robust aggregators: the contract suite for every rule, refusals of too-small rounds, options."""

from __future__ import annotations

import numpy as np
import pytest

from fedcore.aggregators import (
    AdaptiveClipping,
    Bulyan,
    CenteredClipping,
    FedAvg,
    GeometricMedian,
    Krum,
    MultiKrum,
    NearestNeighborMixing,
    RobustAggregator,
    TrimmedMean,
    make_aggregator,
)
from fedcore.errors import AggregationError, ConfigError
from fedcore.testing import AggregatorContract, random_updates

# ---------------------------------------------------------------- contract suite, every rule


class TestKrum(AggregatorContract):
    weights = "ignored"

    def make(self) -> Krum:
        return Krum(f=1)


class TestMultiKrum(AggregatorContract):
    weights = "ignored"

    def make(self) -> Krum:
        return MultiKrum(f=2)


class TestMultiKrumFixedM(AggregatorContract):
    weights = "ignored"

    def make(self) -> Krum:
        return Krum(f=1, m=3)


class TestBulyan(AggregatorContract):
    weights = "ignored"

    def make(self) -> Bulyan:
        return Bulyan(f=1)


class TestTrimmedMean(AggregatorContract):
    weights = "ignored"

    def make(self) -> TrimmedMean:
        return TrimmedMean(f=2)


class TestTrimmedMeanBeta(AggregatorContract):
    weights = "ignored"
    tolerates = 1  # floor(0.2 n) >= 1 from n = 5 on

    def make(self) -> TrimmedMean:
        return TrimmedMean(beta=0.2)


class TestGeometricMedian(AggregatorContract):
    weights = "ignored"

    def make(self) -> GeometricMedian:
        return GeometricMedian(f=1)


class TestWeightedGeometricMedian(AggregatorContract):
    weights = "ratio"  # RFA's alpha_i = n_i / n: robust only while the counts are honest

    def make(self) -> GeometricMedian:
        return GeometricMedian(f=2, weighting="counts")


class TestCenteredClipping(AggregatorContract):
    mean_preserving = False  # one round from a zero centre moves at most tau per pass
    weights = "ignored"
    outlier_bound = 0.3  # fixed point: f tau / (n - f) = 0.25 from the honest mean (n=3, f=1)

    def make(self) -> CenteredClipping:
        return CenteredClipping(f=1, tau=0.5, iterations=40)


class TestAdaptiveClippingFedAvg(AggregatorContract):
    def make(self) -> AdaptiveClipping:
        return AdaptiveClipping(FedAvg(), initial_norm=100.0)


class TestAdaptiveClippingKrum(AggregatorContract):
    weights = "ignored"

    def make(self) -> AdaptiveClipping:
        return AdaptiveClipping(Krum(f=1), initial_norm=100.0, target_quantile=0.8)


class TestNNMKrum(AggregatorContract):
    weights = "ignored"

    def make(self) -> NearestNeighborMixing:
        return NearestNeighborMixing(Krum(f=1), f=1)


class TestNNMFedAvg(AggregatorContract):
    tolerates = 0  # mixing alone does not make a mean robust

    def make(self) -> NearestNeighborMixing:
        return NearestNeighborMixing(FedAvg(), f=1)


# ---------------------------------------------------------------- refusals and options


def test_krum_refusal_message_is_exact() -> None:
    with pytest.raises(AggregationError) as info:
        Krum(f=1).aggregate(random_updates(4), server_round=1)
    assert str(info.value) == (
        "krum with f=1 needs at least 5 updates per round (n >= 2f + 3), got 4: lower f or ask more sites"
    )


@pytest.mark.parametrize(
    ("agg", "n", "pattern"),
    [
        (
            MultiKrum(f=1, m=5),
            5,
            r"multi-krum with f=1, m=5 needs at least 6 .*max\(2f \+ 3, f \+ m\).* got 5",
        ),
        (Bulyan(f=2), 10, r"bulyan with f=2 needs at least 11 updates per round \(n >= 4f \+ 3\), got 10"),
        (TrimmedMean(f=3), 6, r"trimmed_mean with f=3 needs at least 7 .*\(n >= 2f \+ 1\), got 6"),
        (TrimmedMean(beta=0.1), 9, r"trimmed_mean with beta=0.1 needs at least 10 .* got 9: raise beta"),
        (GeometricMedian(f=2), 4, r"geometric_median with f=2 needs at least 5 .* got 4"),
        (CenteredClipping(f=1), 2, r"centered_clipping with f=1 needs at least 3 .* got 2"),
        (
            NearestNeighborMixing(Bulyan(f=1), f=1),
            6,
            r"nnm with f=1 needs .* 7 .*Bulyan's minimum 7\), got 6",
        ),
        (AdaptiveClipping(Krum(f=2)), 6, r"krum with f=2 needs at least 7 .* got 6"),
    ],
)
def test_too_small_rounds_are_refused(agg: RobustAggregator, n: int, pattern: str) -> None:
    assert agg.min_updates() == n + 1
    with pytest.raises(AggregationError, match=pattern):
        agg.aggregate(random_updates(n), server_round=1)


def test_bad_options_are_reported_together() -> None:
    with pytest.raises(
        ConfigError, match=r"f must be an integer >= 0, got -1; m must be an integer >= 1, got 0"
    ):
        Krum(f=-1, m=0)
    with pytest.raises(ConfigError, match="give f or beta, not both"):
        TrimmedMean(f=1, beta=0.1)
    with pytest.raises(ConfigError, match=r"eps must be finite and > 0.*; tol must be"):
        GeometricMedian(eps=0.0, tol=float("nan"))
    with pytest.raises(ConfigError, match="tau must be finite and > 0"):
        CenteredClipping(tau=-1.0)
    with pytest.raises(ConfigError, match=r"target_quantile must be in \(0, 1\).*initial_norm"):
        AdaptiveClipping(FedAvg(), target_quantile=1.5, initial_norm=0.0)
    with pytest.raises(ConfigError, match="f must be an integer"):
        Bulyan(f=True)  # type: ignore[arg-type]


def test_registry_builds_robust_rules_with_their_minimum() -> None:
    expected = {"krum": 7, "multikrum": 7, "bulyan": 11, "trmean": 5, "geometric_median": 5}
    for name, least in expected.items():
        agg = make_aggregator(name, f=2)
        assert isinstance(agg, RobustAggregator) and agg.min_updates() == least, name
    assert make_aggregator("centered_clipping", f=2, tau=0.5).min_updates() == 5
    assert not isinstance(FedAvg(), RobustAggregator)


def test_centered_clipping_refuses_a_centre_of_another_model() -> None:
    agg = CenteredClipping(f=1)
    agg.aggregate(random_updates(3), server_round=1)
    with pytest.raises(AggregationError, match="kept centre has shapes"):
        agg.aggregate(random_updates(3, shapes=((4,),)), server_round=2)


def test_adaptive_clipping_checkpoint_holds_the_norm_then_inner_state() -> None:
    agg = AdaptiveClipping(CenteredClipping(f=1), initial_norm=1.0)
    agg.aggregate(random_updates(3), server_round=1)
    state = agg.state_arrays()
    assert state[0].shape == (1,) and state[0][0] == agg.norm and len(state) == 3
    with pytest.raises(AggregationError, match="expected \\(1,\\)"):
        AdaptiveClipping(FedAvg()).load_state_arrays((np.zeros(3),))

"""DP statistics on OpenDP and their combined intervals.

OpenDP draws its noise from the OS and cannot be seeded: statistical tests use enough draws that a
correct mechanism fails them with probability well under 1e-3. The coverage bar (400 runs through
the sites' real query path) is in ``test_statistics.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import opendp.prelude as dp
import pytest
from dp_accounting import dp_event
from opendp.core import function_eval

from fedcore.analytics import intervals
from fedcore.analytics.dp import (
    Release,
    Statistic,
    dp_count,
    dp_histogram,
    dp_quantiles,
    dp_sum,
    dp_sum_of_squares,
    tree_layers,
)
from fedcore.analytics.intervals import combine_histograms, combine_totals
from fedcore.analytics.moments import combine_variance
from fedcore.analytics.quantiles import combine_quantiles, consistent_leaves
from fedcore.errors import AggregationError, PrivacyError
from fedcore.privacy import accounting

HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")


def _dl_sd(scale: float) -> float:
    """Standard deviation of the discrete Laplace ``P(x) ∝ exp(-|x| / scale)`` on the integers."""
    q = np.exp(-1 / scale)
    return float(np.sqrt(2 * q) / (1 - q))


def _true_tree(leaves: np.ndarray, b: int) -> np.ndarray:
    layers = [leaves]
    while len(layers[-1]) > 1:
        layers.append(layers[-1].reshape(-1, b).sum(axis=1))
    return np.concatenate(layers[::-1])


# --- privacy maps and events ---------------------------------------------------------------------

RELEASES = {
    "count": lambda e: dp_count(120, epsilon=e),
    "sum": lambda e: dp_sum(np.arange(40.0), bounds=(20, 90), epsilon=e, center=55),
    "sum_uncentered": lambda e: dp_sum(np.linspace(-3, 7, 50), bounds=(-5, 10), epsilon=e),
    "sum_of_squares": lambda e: dp_sum_of_squares(np.arange(40.0), bounds=(20, 90), epsilon=e, center=55),
    "histogram": lambda e: dp_histogram(np.array(["a", "b", "x"]), categories=["a", "b"], epsilon=e),
    "quantiles_b4": lambda e: dp_quantiles(np.arange(100.0), bounds=(0, 100), quantiles=[0.5], epsilon=e),
    "quantiles_b8": lambda e: dp_quantiles(
        np.arange(100.0), bounds=(0, 100), quantiles=[0.1, 0.9], epsilon=e, branching_factor=8
    ),
}


@pytest.mark.parametrize("name", sorted(RELEASES))
@pytest.mark.parametrize("eps", [0.3, 1.0, 2.5])
def test_privacy_map_equals_event_epsilon(name: str, eps: float) -> None:
    release = RELEASES[name](eps)
    assert release.epsilon == pytest.approx(eps, rel=1e-9) and release.epsilon <= eps * (1 + 1e-9)
    event = release.event
    layers = event.count if isinstance(event, dp_event.SelfComposedDpEvent) else 1
    single = event.event if isinstance(event, dp_event.SelfComposedDpEvent) else event
    assert isinstance(single, dp_event.DiscreteLaplaceDpEvent)
    pure = layers * single.sensitivity * single.noise_parameter
    assert pure == pytest.approx(release.epsilon, rel=1e-9)
    # the ledger's accountant (PLD, pessimistic discretization 1e-3) at a tiny delta
    pld = accounting.epsilon([event], delta=1e-12)
    assert release.epsilon - 1e-9 <= pld <= release.epsilon + 2e-3 * layers
    assert accounting.event_from_json(accounting.event_to_json(event)) == event


def test_count_stability_is_one() -> None:
    dp.enable_features("contrib")
    count = (dp.vector_domain(dp.atom_domain(T=float)), dp.symmetric_distance()) >> dp.t.then_count()
    assert count.map(1) == 1  # what dp_count assumes about its input


def test_tree_sensitivity_is_layers() -> None:
    release = dp_quantiles(np.arange(10.0), bounds=(0, 10), quantiles=[0.5], epsilon=1.0, bins=64)
    assert release.sensitivity == tree_layers(64, 4) == 4 and release.scale == 4.0
    assert len(release.values) == 1 + 4 + 16 + 64


def test_discrete_event_is_tighter_than_laplace_event() -> None:
    """Why the discrete event: at delta > 0 composed randomized response costs more than Laplace."""
    many = dp_event.SelfComposedDpEvent(dp_count(1, epsilon=1.0).event, 100)
    continuous = dp_event.SelfComposedDpEvent(dp_event.LaplaceDpEvent(1.0), 100)
    assert accounting.epsilon([many], delta=1e-6) > 1.1 * accounting.epsilon([continuous], delta=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda: dp_count(-1, epsilon=0.0),
        lambda: dp_sum([1.0], bounds=(3, 1), epsilon=1, resolution=-1),
        lambda: dp_sum([np.nan], bounds=(0, 1), epsilon=1),
        lambda: dp_histogram(["a"], categories=["a", "a"], epsilon=1),
        lambda: dp_histogram(["a"], categories=["a", 1], epsilon=1),
        lambda: dp_quantiles([1.0], bounds=(0, 1), quantiles=[1.5], epsilon=1, bins=60),
    ],
)
def test_bad_parameters_raise(call: object) -> None:
    with pytest.raises(PrivacyError):
        call()  # type: ignore[operator]


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(PrivacyError, match=r"epsilon.*bounds.*resolution"):
        dp_sum([1.0], bounds=(3, 1), epsilon=-1, resolution=0)


# --- noise scale ----------------------------------------------------------------------------------


def test_count_noise_has_stated_scale() -> None:
    noise = np.array([dp_count(50, epsilon=0.5).value - 50 for _ in range(4000)])
    assert dp_count(50, epsilon=0.5).scale == 2.0
    assert abs(noise.mean()) < 0.15  # sd 2.0 / sqrt(4000) = 0.03
    assert noise.std() == pytest.approx(_dl_sd(2.0), rel=0.08)  # rel. s.e. of the sd ~1.8%
    assert np.all(noise == np.round(noise))


def test_sum_noise_has_stated_scale() -> None:
    x = np.array([25.0, 60.0, 95.0, 10.0])  # two rows clamped
    exact = float(np.sum(np.clip(x, 20, 90) - 55))
    releases = [dp_sum(x, bounds=(20, 90), epsilon=2.0, center=55) for _ in range(3000)]
    noise = np.array([r.value for r in releases]) - exact
    assert releases[0].scale == pytest.approx(35 / 2.0) and releases[0].sensitivity == 35
    assert noise.std() == pytest.approx(np.sqrt(2) * 17.5, rel=0.08)
    assert np.abs(noise / releases[0].granularity - np.round(noise / releases[0].granularity)).max() < 1e-6


def test_histogram_and_tree_noise_have_stated_scale() -> None:
    rows = np.array(["a"] * 5 + ["b"] * 2 + ["z"])
    hist = np.array([dp_histogram(rows, categories=["a", "b"], epsilon=1.0).values for _ in range(1500)])
    assert (hist - [5, 2, 1]).std() == pytest.approx(_dl_sd(1.0), rel=0.08)
    assert hist.mean(axis=0) == pytest.approx([5, 2, 1], abs=0.15)  # s.e. 0.035
    x = np.array([1.0, 2.5, 2.6, 7.0, 9.99, 10.0, -3.0])
    truth = _true_tree(np.histogram(np.clip(x, 0, 10), bins=16, range=(0, 10))[0].astype(float), 4)
    trees = np.array(
        [dp_quantiles(x, bounds=(0, 10), quantiles=[0.5], epsilon=1.5, bins=16).values for _ in range(200)]
    )
    assert np.abs(trees.mean(axis=0) - truth).max() < 1.5  # per-node s.e. ~0.2
    assert (trees - truth).std() == pytest.approx(_dl_sd(3 / 1.5), rel=0.08)


def test_monte_carlo_sampler_matches_discrete_laplace() -> None:
    release = dp_count(1, epsilon=1 / 3)
    draws = intervals.noise_draws(np.random.default_rng(0), [release], (200_000,))
    q = np.exp(-1 / 3)
    pmf = (1 - q) / (1 + q) * q ** np.abs(np.arange(-3, 4))
    freq = np.array([np.mean(draws == k) for k in range(-3, 4)])
    assert freq == pytest.approx(pmf, abs=0.004) and draws.std() == pytest.approx(_dl_sd(3), rel=0.01)


# --- post-processing against OpenDP --------------------------------------------------------------


@pytest.mark.parametrize(("b", "bins"), [(2, 16), (4, 64), (8, 64), (3, 27)])
def test_consistent_leaves_match_opendp(b: int, bins: int) -> None:
    dp.enable_features("contrib")
    rng = np.random.default_rng(b)
    tree = rng.integers(-5, 60, size=sum(b**d for d in range(tree_layers(bins, b))))
    cons = dp.t.make_consistent_b_ary_tree(b, TIA="i64", TOA="f64")
    ref = np.array(function_eval(cons, tree.tolist(), TI="Vec<i64>"))
    assert consistent_leaves(tree, b) == pytest.approx(ref, abs=1e-9)
    assert consistent_leaves(np.stack([tree, tree]), b)[1] == pytest.approx(ref, abs=1e-9)
    leaves = rng.integers(0, 30, bins).astype(float)
    assert consistent_leaves(_true_tree(leaves, b), b) == pytest.approx(leaves)  # identity when consistent


def test_quantile_estimate_is_not_pulled_toward_the_middle_of_the_bounds() -> None:
    """120 values around 240 in bounds [100, 600] at epsilon 1: most of the 64 bins are empty, and
    OpenDP's ``make_quantiles_from_counts`` on the positive parts of the noisy leaves adds mass to
    each, biasing the median toward 350. fedcore's estimate (where the consistent CDF crosses 1/2)
    must not be: its mean error stays within 3, the positive-part one's above 10."""
    dp.enable_features("contrib")
    values = np.random.default_rng(0).normal(240, 50, 120).clip(100, 600)
    true, rng = float(np.median(values)), np.random.default_rng(1)
    mine, positive = [], []
    for _ in range(200):
        release = dp_quantiles(values, bounds=(100, 600), quantiles=[0.5], epsilon=1.0)
        (found,) = combine_quantiles([release], rng=rng, draws=200)
        mine.append(found.estimate - true)
        leaves = consistent_leaves(np.asarray(release.values), release.branching_factor)
        q = dp.t.make_quantiles_from_counts(list(release.edges), [0.5], interpolation="linear")
        positive.append(q(np.maximum(leaves, 0).tolist())[0] - true)
    assert abs(np.mean(mine)) < 3 and np.mean(np.abs(mine)) < 10
    assert np.mean(positive) > 10


def test_exact_and_monte_carlo_intervals_agree() -> None:
    sites = [dp_count(10, epsilon=e) for e in (1.0, 0.5, 0.25)]
    exact = intervals._exact_halfwidth(sites, 0.95)
    draws = np.abs(intervals.noise_draws(np.random.default_rng(1), sites, (400_000,)))
    assert exact is not None and np.mean(draws <= exact) >= 0.95 > np.mean(draws <= exact - 1)
    four = [dp_count(10, epsilon=1.0)] * 4  # sum of four DL(1): P(|noise| <= 5) = 0.9511
    assert intervals._exact_halfwidth(four, 0.95) == 5


def test_combiners_refuse_mismatched_releases() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(AggregationError, match="one of"):
        combine_totals([dp_count(1, epsilon=1), dp_sum([1.0], bounds=(0, 2), epsilon=1)], rng=rng)
    with pytest.raises(AggregationError, match="disagree"):
        combine_totals(
            [dp_sum([1.0], bounds=(0, 2), epsilon=1), dp_sum([1.0], bounds=(0, 3), epsilon=1)], rng=rng
        )
    with pytest.raises(AggregationError, match="no releases"):
        combine_quantiles([], rng=rng)
    q = dp_quantiles([1.0], bounds=(0, 2), quantiles=[0.5], epsilon=1)
    with pytest.raises(AggregationError, match="endpoints"):
        combine_quantiles([q], rng=rng, endpoints="middle")  # type: ignore[arg-type]


def test_edge_endpoints_contain_interpolated_ones() -> None:
    x = np.random.default_rng(4).normal(50, 10, 300)
    sites = [dp_quantiles(x, bounds=(0, 100), quantiles=[0.25, 0.5], epsilon=1.0) for _ in range(3)]
    inner = combine_quantiles(sites, rng=np.random.default_rng(0), endpoints="interpolated")
    outer = combine_quantiles(sites, rng=np.random.default_rng(0))
    for i, o in zip(inner, outer, strict=True):
        assert o.low <= i.low <= i.estimate <= i.high <= o.high
        assert o.low in sites[0].edges and o.high in sites[0].edges


def test_histogram_int_categories_need_int_values() -> None:
    assert dp_histogram(np.array([1.0, 2.0]), categories=[1, 2], epsilon=1.0).categories == (1, 2)
    with pytest.raises(PrivacyError, match="integer values"):
        dp_histogram(np.array([1.5]), categories=[1, 2], epsilon=1.0)


# --- coverage on the heart-disease hospitals ------------------------------------------------------


@pytest.fixture(scope="module")
def hospitals(shared_data: Path) -> list[dict[str, np.ndarray]]:
    sites = []
    for name in HOSPITALS:
        text = (shared_data / "heart_disease" / f"processed.{name}.data").read_text()
        rows = np.array(
            [[np.nan if v == "?" else float(v) for v in line.split(",")] for line in text.split()]
        )
        sites.append({"age": rows[:, 0], "chol": rows[:, 4], "num": rows[:, 13]})
    return sites


def test_variance_and_histogram_intervals(hospitals: list[dict[str, np.ndarray]]) -> None:
    """Variance (a third of epsilon each to count, sum, sum of squares) and age-band histograms."""
    rng, third = np.random.default_rng(11), 1 / 3
    ages = np.concatenate([s["age"] for s in hospitals])
    bands = [np.digitize(s["age"], [40, 60]) for s in hospitals]  # 0, 1, and 2 -> OTHER
    truth_hist = np.bincount(np.concatenate(bands))
    var_hits, hist_hits = [], []
    for _ in range(200):
        est = combine_variance(
            [dp_sum(s["age"], bounds=(20, 90), epsilon=third, center=55) for s in hospitals],
            [dp_sum_of_squares(s["age"], bounds=(20, 90), epsilon=third, center=55) for s in hospitals],
            [dp_count(len(s["age"]), epsilon=third) for s in hospitals],
            rng=rng,
        )
        var_hits.append(est.low <= np.var(ages, ddof=1) <= est.high)
        hist = combine_histograms([dp_histogram(b, categories=[0, 1], epsilon=1.0) for b in bands], rng=rng)
        hist_hits.extend(iv.low <= t <= iv.high for iv, t in zip(hist, truth_hist, strict=True))
    print(f"variance coverage {np.mean(var_hits):.3f}, histogram buckets {np.mean(hist_hits):.3f}")
    # the variance's interval projects a box for (S, Q, N): conservative, so no upper bound here
    assert np.mean(var_hits) >= 0.93 and 0.92 <= np.mean(hist_hits) <= 0.98


def test_release_is_frozen() -> None:
    release = dp_count(3, epsilon=1.0)
    assert isinstance(release, Release) and release.statistic is Statistic.COUNT
    with pytest.raises(AttributeError):
        release.scale = 0.0  # type: ignore[misc]
    with pytest.raises(PrivacyError, match=r"use \.values"):
        _ = dp_histogram(["a"], categories=["a"], epsilon=1.0).value

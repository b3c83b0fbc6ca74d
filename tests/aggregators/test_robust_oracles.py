"""Robust aggregators against naive per-client / per-coordinate loops and independent properties."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcore.aggregators import (
    AdaptiveClipping,
    Aggregator,
    Bulyan,
    CenteredClipping,
    ClientUpdate,
    FedAvg,
    GeometricMedian,
    Krum,
    NearestNeighborMixing,
    TrimmedMean,
)
from fedcore.errors import AggregationError
from fedcore.testing import random_updates

# ---------------------------------------------------------------- naive per-client loop oracles


def _flat(u: ClientUpdate) -> list[float]:
    return [float(x) for a in u.delta for x in a.ravel()]


def _canonical(ups: Sequence[ClientUpdate]) -> list[list[float]]:
    return [_flat(u) for u in sorted(ups, key=lambda u: (u.site, u.num_examples))]


def _dist2(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def _krum_pick(vecs: list[list[float]], f: int, m: int) -> tuple[list[int], list[float]]:
    n, scores = len(vecs), []
    for i in range(n):
        ds = sorted(_dist2(vecs[i], vecs[j]) for j in range(n) if j != i)
        scores.append(sum(ds[: max(n - f - 2, 1)]))
    return sorted(range(n), key=lambda i: scores[i])[:m], scores


def _mean_of(vecs: list[list[float]]) -> list[float]:
    return [sum(col) / len(vecs) for col in zip(*vecs, strict=True)]


def _step(agg: Aggregator, ups: Sequence[ClientUpdate]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in agg.aggregate(ups, server_round=1).step])


@settings(max_examples=25, deadline=None)
@given(
    f=st.integers(0, 2),
    extra=st.integers(0, 4),
    m=st.one_of(st.none(), st.integers(1, 3)),
    seed=st.integers(0, 99),
)
def test_krum_matches_naive_loop(f: int, extra: int, m: int | None, seed: int) -> None:
    agg = Krum(f=f, m=m)
    ups = random_updates(agg.min_updates() + extra, seed=seed)
    vecs = _canonical(ups)
    chosen, scores = _krum_pick(vecs, f, m or len(vecs) - f)
    np.testing.assert_allclose(_step(agg, ups), _mean_of([vecs[i] for i in chosen]), rtol=1e-10, atol=1e-12)
    metrics = agg.aggregate(ups, server_round=1).metrics
    sites = sorted(u.site for u in ups)
    assert {k for k in metrics if k.startswith("krum_selected")} == {
        f"krum_selected[{sites[i]}]" for i in chosen
    }
    np.testing.assert_allclose([metrics[f"krum_score[{s}]"] for s in sites], scores, rtol=1e-9)


@settings(max_examples=15, deadline=None)
@given(f=st.integers(0, 2), extra=st.integers(0, 3), seed=st.integers(0, 99))
def test_bulyan_matches_naive_loop(f: int, extra: int, seed: int) -> None:
    ups = random_updates(4 * f + 3 + extra, seed=seed)
    vecs, picked = _canonical(ups), []
    left = list(range(len(vecs)))
    while len(picked) < len(vecs) - 2 * f:
        chosen, _ = _krum_pick([vecs[i] for i in left], f, 1)
        picked.append(left.pop(chosen[0]))
    beta, expected = len(vecs) - 4 * f, []
    for c in range(len(vecs[0])):
        col = [vecs[i][c] for i in picked]
        med = float(np.median(col))
        expected.append(sum(sorted(col, key=lambda x: abs(x - med))[:beta]) / beta)
    np.testing.assert_allclose(_step(Bulyan(f=f), ups), expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), k=st.integers(0, 5), seed=st.integers(0, 99))
def test_trimmed_mean_matches_naive_loop(n: int, k: int, seed: int) -> None:
    if n < 2 * k + 1:
        with pytest.raises(AggregationError, match=rf"at least {2 * k + 1} updates .* got {n}"):
            TrimmedMean(f=k).aggregate(random_updates(n, seed=seed), server_round=1)
        return
    ups = random_updates(n, seed=seed)
    vecs = _canonical(ups)
    expected = [sum(sorted(col)[k : n - k]) / (n - 2 * k) for col in zip(*vecs, strict=True)]
    res = TrimmedMean(f=k).aggregate(ups, server_round=1)
    np.testing.assert_allclose(np.concatenate([a.ravel() for a in res.step]), expected, rtol=1e-12)
    assert res.metrics["trimmed_values"] == 2 * k * len(expected)


def test_trimmed_fraction_names_the_outlier() -> None:
    ups = random_updates(6, seed=4)
    ups.append(ClientUpdate(delta=(np.full((3, 2), 50.0), np.full(2, -50.0)), num_examples=1, site="liar"))
    metrics = TrimmedMean(f=1).aggregate(ups, server_round=1).metrics
    assert metrics["trimmed_fraction[liar]"] == 1.0
    assert all(v < 1.0 for k, v in metrics.items() if k.startswith("trimmed_fraction[site"))


def test_trimmed_mean_beta_trims_floor_beta_n() -> None:
    agg = TrimmedMean(beta=0.15)
    assert agg.min_updates() == 7  # floor(0.15 * 6) = 0, floor(0.15 * 7) = 1
    assert agg.aggregate(random_updates(14), server_round=1).metrics["trimmed_per_side"] == 2.0


def _naive_weiszfeld(
    vecs: list[list[float]], alpha: list[float], *, iterations: int, eps: float
) -> list[float]:
    v = [float(np.median(col)) for col in zip(*vecs, strict=True)]
    for _ in range(iterations):
        beta = [a / max(eps, math.sqrt(_dist2(v, x))) for a, x in zip(alpha, vecs, strict=True)]
        v = [sum(b * x[c] for b, x in zip(beta, vecs, strict=True)) / sum(beta) for c in range(len(v))]
    return v


@pytest.mark.parametrize("weighted", [False, True])
def test_geometric_median_matches_naive_weiszfeld(weighted: bool) -> None:
    ups = random_updates(7, seed=5)
    ordered = sorted(ups, key=lambda u: (u.site, u.num_examples))
    total = sum(u.num_examples for u in ups)
    alpha = [u.num_examples / total if weighted else 1 / 7 for u in ordered]
    weighting = "counts" if weighted else "uniform"
    agg = GeometricMedian(iterations=12, eps=1e-6, tol=1e-300, weighting=weighting)  # exactly 12 steps
    expected = _naive_weiszfeld(_canonical(ups), alpha, iterations=12, eps=1e-6)
    np.testing.assert_allclose(_step(agg, ups), expected, rtol=1e-10)


def test_geometric_median_is_the_minimiser() -> None:
    """Independent of Weiszfeld: no small move lowers sum_i ||v - x_i||; in 1-D it is the median."""
    ups = random_updates(9, seed=6)
    x = np.array(_canonical(ups))
    v = _step(GeometricMedian(f=4, iterations=1000, tol=1e-15, eps=1e-12), ups)
    obj = lambda p: float(np.sum(np.linalg.norm(x - p, axis=1)))  # noqa: E731
    rng = np.random.default_rng(0)
    assert all(obj(v) <= obj(v + 1e-4 * d) + 1e-12 for d in rng.normal(size=(50, x.shape[1])))
    line = [
        ClientUpdate(delta=(np.array([float(t)]),), num_examples=1, site=str(t)) for t in (0, 1, 2, 7, 100)
    ]
    assert _step(GeometricMedian(iterations=1000, tol=1e-15, eps=1e-9), line)[0] == pytest.approx(
        2.0, abs=1e-6
    )


def test_weighted_geometric_median_is_owned_by_a_count_liar() -> None:
    """Why counts are ignored by default: one liar claiming more examples than all others wins."""
    honest = [ClientUpdate(delta=(np.zeros(4),), num_examples=100, site=f"h{k}") for k in range(4)]
    liar = ClientUpdate(delta=(np.full(4, 1e3),), num_examples=10**6, site="liar")
    assert np.linalg.norm(_step(GeometricMedian(weighting="counts"), [*honest, liar])) > 1e3
    assert np.linalg.norm(_step(GeometricMedian(), [*honest, liar])) < 1e-3


def test_centered_clipping_matches_naive_loop_across_rounds() -> None:
    agg, tau, v = CenteredClipping(f=1, tau=0.7, iterations=3), 0.7, [0.0] * 8
    for r in range(1, 5):
        ups = random_updates(5, seed=r)
        vecs = _canonical(ups)
        for _ in range(3):
            moves = []
            for x in vecs:
                diff = [a - b for a, b in zip(x, v, strict=True)]
                norm = math.sqrt(sum(d * d for d in diff))
                moves.append([d * min(1.0, tau / norm) for d in diff])
            v = [a + b for a, b in zip(v, _mean_of(moves), strict=True)]
        np.testing.assert_allclose(_step(agg, ups), v, rtol=1e-12)


def test_centered_clipping_learns_from_history() -> None:
    """One pass per round (the paper's setting): the centre walks to the honest cluster over rounds
    and stays within f tau / (n - f) of its mean although the outlier is 1e6 away every round."""
    agg, rng = CenteredClipping(f=2, tau=1.0), np.random.default_rng(1)
    for r in range(1, 31):
        honest = [
            ClientUpdate(delta=(5.0 + 0.05 * rng.normal(size=4),), num_examples=1, site=f"h{k}")
            for k in range(5)
        ]
        bad = [
            ClientUpdate(delta=(np.array([1e6, -1e6, 0, 0]),), num_examples=1, site=f"x{k}") for k in range(2)
        ]
        step = agg.aggregate([*honest, *bad], server_round=r).step[0]
    err = float(np.linalg.norm(step - np.mean([u.delta[0] for u in honest], axis=0)))
    assert err <= 2 * 1.0 / 5 + 0.05


def test_adaptive_clipping_clips_and_tracks_the_quantile() -> None:
    """C moves geometrically per Andrew et al. Eq. 2 (scalar oracle) and settles at the median norm."""
    norms = np.arange(1.0, 11.0)  # ten updates of norms 1..10; the median lies in [5, 6]
    ups = [ClientUpdate(delta=(np.array([n, 0.0]),), num_examples=1, site=f"s{int(n)}") for n in norms]
    agg, c = AdaptiveClipping(FedAvg(), target_quantile=0.5, learning_rate=0.2, initial_norm=0.5), 0.5
    for r in range(1, 61):
        res = agg.aggregate(ups, server_round=r)
        assert res.step[0][0] == pytest.approx(np.mean(np.minimum(norms, c)), rel=1e-12)
        assert res.metrics["clip_norm"] == pytest.approx(c, rel=1e-12)
        c *= math.exp(-0.2 * (np.mean(norms <= c) - 0.5))
    assert 4.5 <= agg.norm <= 6.6


def test_adaptive_clipping_bounds_an_outliers_influence() -> None:
    """Clipped at C, f outliers move a mean by at most f (C + max honest norm) / n."""
    rng = np.random.default_rng(2)
    honest = [
        ClientUpdate(delta=(1.0 + 0.1 * rng.normal(size=6),), num_examples=1, site=f"h{k}") for k in range(8)
    ]
    bad = [ClientUpdate(delta=(np.full(6, -1e4),), num_examples=1, site=f"x{k}") for k in range(2)]
    agg = AdaptiveClipping(FedAvg(), initial_norm=3.0)
    step = agg.aggregate([*honest, *bad], server_round=1).step[0]
    mean = np.mean([u.delta[0] for u in honest], axis=0)
    clipped_mean = (8 * mean) / 10  # the honest ones pass unclipped (norms ~2.45 < 3)
    assert np.linalg.norm(step - clipped_mean) <= 2 * 3.0 / 10 + 1e-9
    assert np.linalg.norm(FedAvg().aggregate([*honest, *bad], server_round=1).step[0] - mean) > 1e3


def test_nnm_matches_naive_loop() -> None:
    ups, f = random_updates(7, seed=8), 2
    ordered = sorted(ups, key=lambda u: (u.site, u.num_examples))
    vecs = [_flat(u) for u in ordered]
    mixed = []
    for x in vecs:
        near = sorted(range(7), key=lambda j: _dist2(x, vecs[j]))[: 7 - f]
        mixed.append(_mean_of([vecs[j] for j in near]))
    total = sum(u.num_examples for u in ordered)
    expected = [
        sum(u.num_examples * m[c] for u, m in zip(ordered, mixed, strict=True)) / total for c in range(8)
    ]
    np.testing.assert_allclose(_step(NearestNeighborMixing(FedAvg(), f=f), ups), expected, rtol=1e-10)


def test_metrics_name_unnamed_or_duplicate_sites_by_input_position() -> None:
    ups = [ClientUpdate(delta=(np.array([float(k)]),), num_examples=1) for k in range(5)]
    ups.append(ClientUpdate(delta=(np.array([1e6]),), num_examples=1))
    metrics = TrimmedMean(f=1).aggregate(ups, server_round=1).metrics
    assert metrics["trimmed_fraction[#5]"] == 1.0 and metrics["trimmed_fraction[#0]"] == 1.0
    assert metrics["trimmed_fraction[#2]"] == 0.0


def test_distances_keep_precision_under_a_common_component_and_huge_outliers() -> None:
    """Without centring, ||x||^2 ~ 5e13 swamps honest distances ~1e-4 (float64 error ~1e-2)."""
    from fedcore.aggregators._robust import sq_distances

    x = 1e6 + 1e-3 * np.random.default_rng(9).normal(size=(7, 50))
    x[5:] = 1e12  # two colluding outliers
    direct = np.array([[np.sum((a - b) ** 2) for b in x[:5]] for a in x[:5]])
    np.testing.assert_allclose(sq_distances(x)[:5, :5], direct, rtol=1e-6, atol=1e-12)

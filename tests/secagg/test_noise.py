"""Noise samplers: distributions checked statistically, fixed seeds, stated tolerances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chisquare
from scipy.stats import skellam as skellam_dist

from fedcore.errors import PrivacyError
from fedcore.privacy.rng import Source
from fedcore.secagg.noise import discrete_gaussian, poisson, skellam

N = 200_000


def _source(seed: int) -> Source:
    return Source(secure=False, seed=seed)  # reproducible test noise (seeded_source would warn)


def _chi2_against(draws: np.ndarray, pmf: dict[int, float]) -> float:
    """p-value of a chi-square test of ``draws`` against ``pmf`` (cells below 5 expected pooled)."""
    keys = sorted(k for k, p in pmf.items() if p * len(draws) >= 5)
    observed = [int(np.sum(draws == k)) for k in keys]
    expected = [pmf[k] * len(draws) for k in keys]
    observed.append(len(draws) - sum(observed))
    expected.append(len(draws) - sum(expected))
    return float(chisquare(observed, expected).pvalue)


@pytest.mark.parametrize("sigma", [0.6, 2.5])
def test_discrete_gaussian_matches_its_pmf(sigma: float) -> None:
    ks = range(-40, 41)
    weights = {k: math.exp(-(k**2) / (2 * sigma**2)) for k in ks}
    z = sum(weights.values())
    draws = discrete_gaussian(_source(1), sigma=sigma, size=N)
    assert _chi2_against(draws, {k: w / z for k, w in weights.items()}) > 1e-3


def test_discrete_gaussian_variance_large_sigma() -> None:
    sigma = 1000.0
    draws = discrete_gaussian(_source(2), sigma=sigma, size=N)
    # sample variance of N normal draws has relative std sqrt(2/N) = 0.32%; tolerance 5 of those
    assert draws.var() / sigma**2 == pytest.approx(1.0, abs=5 * math.sqrt(2 / N))
    assert abs(draws.mean()) < 5 * sigma / math.sqrt(N)
    assert draws.dtype == np.int64 and len(draws) == N


@pytest.mark.parametrize("mu", [1.5, 40.0])
def test_skellam_matches_its_pmf(mu: float) -> None:
    draws = skellam(_source(3), variance=mu, size=N)
    pmf = {k: float(skellam_dist.pmf(k, mu / 2, mu / 2)) for k in range(-200, 201)}
    assert _chi2_against(draws, pmf) > 1e-3


def test_skellam_variance_large() -> None:
    mu = 1e6
    draws = skellam(_source(4), variance=mu, size=N)
    assert draws.var() / mu == pytest.approx(1.0, abs=5 * math.sqrt(2 / N))


@pytest.mark.parametrize("lam", [3.0, 10.0, 77.0])
def test_poisson_matches_its_pmf(lam: float) -> None:
    draws = poisson(_source(5), lam=lam, size=N)
    pmf = {k: math.exp(k * math.log(lam) - lam - math.lgamma(k + 1)) for k in range(0, 400)}
    assert _chi2_against(draws, pmf) > 1e-3


def test_a_million_draws_are_fast_enough() -> None:
    import time

    t0 = time.perf_counter()
    discrete_gaussian(_source(6), sigma=50.0, size=1_000_000)
    skellam(_source(7), variance=2500.0, size=1_000_000)
    assert time.perf_counter() - t0 < 10.0  # ~1 s on a quiet core; vectorised, not a Python loop


def test_bad_parameters_raise() -> None:
    with pytest.raises(PrivacyError, match="sigma"):
        discrete_gaussian(_source(0), sigma=-1.0, size=3)
    with pytest.raises(PrivacyError, match="variance"):
        skellam(_source(0), variance=float("nan"), size=3)
    assert discrete_gaussian(_source(0), sigma=1.0, size=0).shape == (0,)

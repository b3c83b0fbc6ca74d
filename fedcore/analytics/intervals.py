"""Combine K sites' DP releases into one estimate over the union of their rows, with an interval.

The data are fixed; the only randomness is the sites' DP noise, whose distribution is public (each
release carries its discrete Laplace ``scale`` and lattice ``granularity``), so every interval is
built from it, never from a normal approximation (with 1-4 sites Laplace sums are far from normal).
Each interval covers the *exact* statistic of the clamped values, not only the noise: what the
sites' own rounding (sums on a lattice) moves is added to it, and ratios are inverted exactly.

- counts, histogram buckets: ``T + η ± c``, ``c`` the smallest ``level``-quantile of ``|η|``, ``η``
  the sum of the sites' (symmetric) noises, by exact convolution on the lattice (coverage >= level);
- sums, means (and proportions), variances: ``fedcore.analytics.moments``;
- quantiles: test inversion on the summed noisy tree (``fedcore.analytics.quantiles``).

Monte Carlo uses the caller's seeded ``rng``: a discrete Laplace draw of scale ``s`` (lattice units) is
``floor(s E1) - floor(s E2)``, ``E1, E2`` standard exponentials (each floor is geometric with
``P(>= k) = exp(-k / s)``; Inusah & Kozubowski 2006).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedcore.analytics.dp import Release, Statistic
from fedcore.errors import AggregationError

__all__ = [
    "Floats",
    "Interval",
    "check_releases",
    "combine_histograms",
    "combine_totals",
    "halfwidth",
    "noise_draws",
    "stacked",
]

Floats = NDArray[np.float64]


@dataclass(frozen=True)
class Interval:
    """A combined estimate and its ``level`` interval for the exact statistic (see the module)."""

    estimate: float
    low: float
    high: float
    level: float


def check_releases(
    releases: Sequence[Release], allowed: Sequence[Statistic], *, level: float, draws: int
) -> None:
    """Raise one ``AggregationError`` naming every reason ``releases`` cannot be combined."""
    problems: list[str] = []
    if not releases:
        problems.append("no releases to combine; pass one per site")
    kinds = sorted(r.statistic.value for r in releases)
    if not set(kinds) <= {k.value for k in allowed} or len(set(kinds)) > 1:
        problems.append(f"releases must all be one of {[k.value for k in allowed]}, got {kinds}")
    setups = {(r.bounds, r.center, r.categories, r.edges, r.quantiles, r.branching_factor) for r in releases}
    if len(setups) > 1:
        problems.append("releases disagree on bounds, center, categories, edges, quantiles or branching")
    if not 0 < level < 1:
        problems.append(f"level must be in (0, 1), got {level}")
    if draws < 100:
        problems.append(f"draws must be >= 100, got {draws}")
    if problems:
        raise AggregationError("; ".join(problems))


def noise_draws(rng: np.random.Generator, releases: Sequence[Release], shape: tuple[int, ...]) -> Floats:
    """Draws of the sum of the sites' discrete Laplace noises, in value units."""
    total = np.zeros(shape)
    for r in releases:
        s = r.scale / r.granularity
        if r.shape == 1.0:
            e1, e2 = rng.standard_exponential(shape), rng.standard_exponential(shape)
            steps = np.floor(s * e1) - np.floor(s * e2)
        else:  # a sum of HE noise shares: a difference of Polya (negative binomial) draws
            p = -np.expm1(-1.0 / s)
            steps = rng.negative_binomial(r.shape, p, shape) - rng.negative_binomial(r.shape, p, shape)
        total += steps * r.granularity
    return total


def stacked(releases: Sequence[Release]) -> Floats:
    """The releases' values summed element-wise (what the sites' answers add up to)."""
    return np.asarray(np.sum([r.values for r in releases], axis=0), dtype=np.float64)


_EXACT_MAX_SUPPORT = 2**20
"""Largest summed noise support (lattice points) convolved exactly; beyond it, Monte Carlo."""


def _exact_halfwidth(releases: Sequence[Release], level: float) -> float | None:
    """Smallest ``c`` with ``P(|η| <= c) >= level`` by exact convolution of the sites' discrete Laplace
    PMFs ``tanh(1 / 2s) exp(-|x| / s)`` (truncated where the tail is below ``e**-40``); ``None`` when
    the sites' lattices differ or the support is too large."""
    g = releases[0].granularity
    scales = [r.scale / r.granularity for r in releases]
    tails = [int(np.ceil(40 * s)) + 1 for s in scales]
    too_big = sum(2 * t + 1 for t in tails) > _EXACT_MAX_SUPPORT
    if any(r.granularity != g or r.shape != 1.0 for r in releases) or too_big:
        return None
    size = sum(2 * t + 1 for t in tails) - len(tails) + 1  # support of the sum
    fast = 1 << (size - 1).bit_length()  # one FFT size, a power of two (pocketfft is slow on primes)
    spectrum, seen = np.ones(fast // 2 + 1, dtype=np.complex128), {}
    for s, t in zip(scales, tails, strict=True):
        if (s, t) not in seen:
            seen[(s, t)] = np.fft.rfft(np.tanh(0.5 / s) * np.exp(-np.abs(np.arange(-t, t + 1)) / s), fast)
        spectrum *= seen[(s, t)]
    pmf = np.fft.irfft(spectrum, fast)[:size]
    mid = len(pmf) // 2
    within = np.concatenate([[pmf[mid]], pmf[mid] + 2 * np.cumsum(pmf[mid + 1 :])])
    return float(np.searchsorted(within, level - 1e-9)) * g


def halfwidth(releases: Sequence[Release], level: float, rng: np.random.Generator, draws: int) -> float:
    """Half-width of the central ``level`` interval of the summed noise: exact when feasible (counts,
    histograms), else the ``level``-quantile of ``|η|`` over ``draws`` Monte Carlo draws (sums)."""
    exact = _exact_halfwidth(releases, level)
    if exact is not None:
        return exact
    return float(np.quantile(np.abs(noise_draws(rng, releases, (draws,))), level, method="inverted_cdf"))


def combine_totals(
    releases: Sequence[Release], *, rng: np.random.Generator, level: float = 0.95, draws: int = 20_000
) -> Interval:
    """Sum of the sites' released totals with an interval for the summed noise only.

    Exact for counts (integers, no rounding). For sums it covers the sum *on the lattice* (every
    clamped value rounded to the release's ``granularity``); ``combine_sum`` covers the exact sum.
    """
    check_releases(
        releases, [Statistic.COUNT, Statistic.SUM, Statistic.SUM_OF_SQUARES], level=level, draws=draws
    )
    total = float(sum(r.value for r in releases))
    c = halfwidth(releases, level, rng, draws)
    return Interval(total, total - c, total + c, level)


def combine_histograms(
    releases: Sequence[Release], *, rng: np.random.Generator, level: float = 0.95, draws: int = 20_000
) -> tuple[Interval, ...]:
    """Per-bucket totals (categories, then ``OTHER``) with per-bucket (not simultaneous) intervals,
    exact for the bucket counts (integers: no rounding, no bias)."""
    check_releases(releases, [Statistic.HISTOGRAM], level=level, draws=draws)
    c = halfwidth(releases, level, rng, draws)
    return tuple(Interval(float(t), float(t) - c, float(t) + c, level) for t in stacked(releases))

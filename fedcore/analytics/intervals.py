"""Combine K sites' DP releases into one estimate over the union of their rows, with an interval.

The data are fixed; the only randomness is the sites' DP noise, whose distribution is public (each
release carries its discrete Laplace ``scale`` and lattice ``granularity``), so every interval is
built from it, never from a normal approximation (with 1-4 sites Laplace sums are far from normal):

- totals (counts, sums, histogram buckets): ``T + η ± c``, ``c`` the smallest ``level``-quantile of
  ``|η|``, ``η`` the sum of the sites' (symmetric) noises: by exact convolution on the lattice for
  counts and histograms (coverage >= ``level``), by Monte Carlo for sums (near-continuous noise);
- mean ``S / N`` and variance ``(Q - S²/N) / (N - 1)``: parametric (basic) bootstrap, redrawing the
  noise around the released sums and counts;
- quantiles: test inversion on the summed noisy tree (``combine_quantiles``).

Monte Carlo uses the caller's seeded ``rng``: a discrete Laplace draw of scale ``s`` (lattice units) is
``floor(s E1) - floor(s E2)``, ``E1, E2`` standard exponentials (each floor is geometric with
``P(>= k) = exp(-k / s)``; Inusah & Kozubowski 2006).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedcore.analytics.dp import Release, Statistic
from fedcore.errors import AggregationError

__all__ = [
    "Endpoints",
    "Interval",
    "combine_histograms",
    "combine_mean",
    "combine_quantiles",
    "combine_totals",
    "combine_variance",
    "consistent_leaves",
]

Floats = NDArray[np.float64]
Endpoints = Literal["interpolated", "edges"]


@dataclass(frozen=True)
class Interval:
    """A combined estimate and its central ``level`` interval for the DP noise."""

    estimate: float
    low: float
    high: float
    level: float


def _check(releases: Sequence[Release], allowed: Sequence[Statistic], *, level: float, draws: int) -> None:
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


def _noise(rng: np.random.Generator, releases: Sequence[Release], shape: tuple[int, ...]) -> Floats:
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


def _stacked(releases: Sequence[Release]) -> Floats:
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
    pmf = np.ones(1)
    for s, t in zip(scales, tails, strict=True):
        site = np.tanh(0.5 / s) * np.exp(-np.abs(np.arange(-t, t + 1)) / s)
        n = len(pmf) + len(site) - 1
        pmf = np.fft.irfft(np.fft.rfft(pmf, n) * np.fft.rfft(site, n), n)
    mid = len(pmf) // 2
    within = np.concatenate([[pmf[mid]], pmf[mid] + 2 * np.cumsum(pmf[mid + 1 :])])
    return float(np.searchsorted(within, level - 1e-9)) * g


def _halfwidth(releases: Sequence[Release], level: float, rng: np.random.Generator, draws: int) -> float:
    """Half-width of the central ``level`` interval of the summed noise: exact when feasible (counts,
    histograms), else the ``level``-quantile of ``|η|`` over ``draws`` Monte Carlo draws (sums)."""
    exact = _exact_halfwidth(releases, level)
    if exact is not None:
        return exact
    return float(np.quantile(np.abs(_noise(rng, releases, (draws,))), level, method="inverted_cdf"))


def combine_totals(
    releases: Sequence[Release], *, rng: np.random.Generator, level: float = 0.95, draws: int = 20_000
) -> Interval:
    """Sum of the sites' counts (or sums, or sums of squares) with an interval for the summed noise.

    For sums the estimate is ``sum(clamp(v) - center)`` over the union (the releases' ``center``).
    """
    _check(releases, [Statistic.COUNT, Statistic.SUM, Statistic.SUM_OF_SQUARES], level=level, draws=draws)
    total = float(sum(r.value for r in releases))
    c = _halfwidth(releases, level, rng, draws)
    return Interval(total, total - c, total + c, level)


def combine_histograms(
    releases: Sequence[Release], *, rng: np.random.Generator, level: float = 0.95, draws: int = 20_000
) -> tuple[Interval, ...]:
    """Per-bucket totals (categories, then ``OTHER``) with per-bucket (not simultaneous) intervals."""
    _check(releases, [Statistic.HISTOGRAM], level=level, draws=draws)
    c = _halfwidth(releases, level, rng, draws)
    return tuple(Interval(float(t), float(t) - c, float(t) + c, level) for t in _stacked(releases))


def _basic_bootstrap(estimate: float, boot: Floats, level: float, limits: tuple[float, float]) -> Interval:
    """``[2 t - q_hi, 2 t - q_lo]`` from bootstrap quantiles (Davison & Hinkley 1997, eq. 5.6), clipped
    to ``limits``, where the estimand is known to lie."""
    tail = (1 - level) / 2
    q_lo, q_hi = np.quantile(boot, [tail, 1 - tail])
    low, high = np.clip([2 * estimate - q_hi, 2 * estimate - q_lo], *limits)
    return Interval(estimate, float(low), float(high), level)


def _sums_and_counts(
    sums: Sequence[Release],
    counts: Sequence[Release],
    level: float,
    draws: int,
    kind: Statistic = Statistic.SUM,
) -> None:
    _check(sums, [kind], level=level, draws=draws)
    _check(counts, [Statistic.COUNT], level=level, draws=draws)
    if sums[0].bounds is None:
        raise AggregationError("sum releases carry no bounds; build them with dp_sum")


def _mean(center: float, s: Floats | float, n: Floats | float, limits: tuple[float, float]) -> Floats:
    return np.clip(center + np.asarray(s) / np.maximum(n, 1.0), *limits)


def combine_mean(
    sums: Sequence[Release],
    counts: Sequence[Release],
    *,
    rng: np.random.Generator,
    level: float = 0.95,
    draws: int = 20_000,
) -> Interval:
    """Mean of the clamped values over the union, ``center + S / N``, with a parametric bootstrap.

    ``S`` and ``N`` are the summed ``dp_sum`` and ``dp_count`` releases (one of each per site, same
    bounds and center). Bootstrap draws add fresh noise of the sites' scales to ``(S, N)``; counts are
    floored at one and means clipped to the bounds (where the clamped mean must lie). Assumes the
    noise is small enough against ``N`` that ``S / N`` is locally smooth (plug-in bootstrap).
    """
    _sums_and_counts(sums, counts, level, draws)
    assert sums[0].bounds is not None
    limits, center = sums[0].bounds, sums[0].center
    s, n = sum(r.value for r in sums), sum(r.value for r in counts)
    boot = _mean(center, s + _noise(rng, sums, (draws,)), n + _noise(rng, counts, (draws,)), limits)
    return _basic_bootstrap(float(_mean(center, s, n, limits)), boot, level, limits)


def _variance(s: Floats | float, q: Floats | float, n: Floats | float, cap: float) -> Floats:
    n = np.maximum(n, 2.0)
    return np.clip((np.asarray(q) - np.asarray(s) ** 2 / n) / (n - 1), 0.0, cap)


def combine_variance(
    sums: Sequence[Release],
    squares: Sequence[Release],
    counts: Sequence[Release],
    *,
    rng: np.random.Generator,
    level: float = 0.95,
    draws: int = 20_000,
) -> Interval:
    """Sample variance of the clamped values over the union, ``(Q - S²/N) / (N - 1)``, bootstrapped.

    ``S`` and ``Q`` are summed ``dp_sum`` and ``dp_sum_of_squares`` releases with the same bounds and
    center (the variance does not depend on the center); as ``combine_mean``, with counts floored at
    two and variances clipped to ``[0, (hi - lo)**2 / 2]`` (the largest sample variance in bounds).
    """
    _sums_and_counts(sums, counts, level, draws)
    _sums_and_counts(squares, counts, level, draws, Statistic.SUM_OF_SQUARES)
    if (sums[0].bounds, sums[0].center) != (squares[0].bounds, squares[0].center):
        raise AggregationError("sums and sums of squares must share bounds and center")
    assert sums[0].bounds is not None
    lo, hi = sums[0].bounds
    cap = (hi - lo) ** 2 / 2
    s, q, n = (sum(r.value for r in group) for group in (sums, squares, counts))
    boot = _variance(
        s + _noise(rng, sums, (draws,)),
        q + _noise(rng, squares, (draws,)),
        n + _noise(rng, counts, (draws,)),
        cap,
    )
    return _basic_bootstrap(float(_variance(s, q, n, cap)), boot, level, (0.0, cap))


def consistent_leaves(tree: ArrayLike, branching_factor: int) -> Floats:
    """Leaves of the least-squares consistent tree (Hay et al. 2010, §4.1; OpenDP's
    ``make_consistent_b_ary_tree`` on a complete tree), over the last axis (breadth-first, root first).

    Bottom-up: ``z = h`` at leaves and ``z = (b^l - b^(l-1)) h + (b^(l-1) - 1) Σ z_child`` over
    ``b^l - 1`` at height ``l``; top-down: each child gets ``z + (parent - Σ z_siblings) / b``. Linear,
    and the identity on consistent trees.
    """
    t, b = np.asarray(tree, dtype=np.float64), branching_factor
    sizes = [1]
    while sum(sizes) < t.shape[-1]:
        sizes.append(sizes[-1] * b)
    if sum(sizes) != t.shape[-1]:
        raise AggregationError(f"{t.shape[-1]} nodes is not a complete {b}-ary tree")
    layers = np.split(t, np.cumsum(sizes)[:-1], axis=-1)
    z = list(layers)
    for d in range(len(sizes) - 2, -1, -1):
        height = len(sizes) - d
        child = z[d + 1].reshape(*t.shape[:-1], sizes[d], b).sum(-1)
        z[d] = ((b**height - b ** (height - 1)) * layers[d] + (b ** (height - 1) - 1) * child) / (
            b**height - 1
        )
    h = z[0]
    for d in range(1, len(sizes)):
        siblings = z[d].reshape(*t.shape[:-1], sizes[d - 1], b).sum(-1)
        h = z[d] + np.repeat((h - siblings) / b, b, axis=-1)
    return h


def _prefix(leaves: Floats) -> Floats:
    """Counts below each edge: ``[0, l0, l0 + l1, ..., total]`` over the last axis."""
    zeros = np.zeros((*leaves.shape[:-1], 1))
    return np.concatenate([zeros, np.cumsum(leaves, axis=-1)], axis=-1)


def _crossing(g: Floats, edges: Floats, j: int) -> float:
    """Where the line through ``(e_j, g_j)`` and ``(e_{j+1}, g_{j+1})`` crosses zero, within the bin."""
    if g[j + 1] == g[j]:
        return float(edges[j])
    t = float(np.clip(-g[j] / (g[j + 1] - g[j]), 0.0, 1.0))
    return float(edges[j] + t * (edges[j + 1] - edges[j]))


def _inverted(
    gap: Floats, noise_gap: Floats, edges: Floats, level: float, endpoints: Endpoints
) -> tuple[float, float]:
    tail = (1 - level) / 2
    c_lo, c_hi = np.quantile(noise_gap, [tail, 1 - tail], axis=0)
    below, above = np.flatnonzero(gap < c_lo), np.flatnonzero(gap > c_hi)
    a = int(below.max()) if below.size else 0
    b = int(above.min()) if above.size else len(edges) - 1
    if endpoints == "edges" or a >= b:
        return float(edges[min(a, b)]), float(edges[max(a, b)])
    low = _crossing(gap - c_lo, edges, a) if below.size else float(edges[0])
    high = _crossing(gap - c_hi, edges, b - 1) if above.size else float(edges[-1])
    return low, high


def combine_quantiles(
    releases: Sequence[Release],
    *,
    rng: np.random.Generator,
    level: float = 0.95,
    draws: int = 2_000,
    endpoints: Endpoints = "interpolated",
) -> tuple[Interval, ...]:
    """Quantiles of the clamped values over the union, from the sites' summed noisy trees.

    Trees are summed node-wise (every node's noise then has the same variance, so the consistent
    tree of Hay et al. 2010, §4.1, is the least-squares fit) and made consistent. The estimate is
    where the consistent CDF crosses ``alpha`` (linear within a bin; the midpoint of the first and
    last crossing when noise makes it cross more than once). It is not OpenDP's
    ``make_quantiles_from_counts`` on the leaves' positive parts: clipping negative leaves adds mass
    to every empty bin and pulls the estimate toward the middle of the bounds (+25 bias on 120 values
    in [100, 600] at epsilon 1, ``tests/analytics/test_dp.py``). The interval inverts tests at the
    bin edges ``e_j`` for ``Q = inf{x : F(x) >= alpha}``: ``Q >= e_j`` iff
    ``D_j = #{v < e_j} - alpha N < 0``, and the error ``D̂_j - D_j`` is a known linear function of
    the noise, whose quantiles ``c_lo_j, c_hi_j`` come from ``draws`` simulated noise trees. ``low``
    is where ``D̂ - c_lo`` last falls below 0 (``Q`` is surely above), ``high`` where ``D̂ - c_hi``
    first exceeds 0 (surely below); the bounds if never.

    ``endpoints="interpolated"`` places each endpoint inside its bin by linear interpolation between
    the edges, assuming values spread evenly within that bin (as the estimate does): near-nominal
    coverage for smooth data (95.2% in 3,000 runs on the heart-disease median). ``"edges"`` returns
    whole edges: no within-bin assumption, conservative by up to a bin each side (99.5% there). The
    per-edge tests are not simultaneous, which costs a little coverage when many edges lie within the
    noise of ``Q`` (very fine bins). Intervals are per quantile, not joint.
    """
    if endpoints not in get_args(Endpoints):
        raise AggregationError(f"endpoints must be one of {get_args(Endpoints)}, got {endpoints!r}")
    _check(releases, [Statistic.QUANTILES], level=level, draws=draws)
    first = releases[0]
    edges, b = np.asarray(first.edges), first.branching_factor
    leaves = consistent_leaves(_stacked(releases), b)
    noise = consistent_leaves(_noise(rng, releases, (draws, len(first.values))), b)
    prefix, noise_prefix = _prefix(leaves), _prefix(noise)
    out = []
    for alpha in first.quantiles:
        gap = prefix - alpha * prefix[-1]
        noise_gap = noise_prefix - alpha * noise_prefix[:, -1:]
        low, high = _inverted(gap, noise_gap, edges, level, endpoints)
        centre = _inverted(gap, np.zeros((1, len(gap))), edges, level, "interpolated")
        estimate = float(np.clip(sum(centre) / 2, low, high))
        out.append(Interval(estimate, low, high, level))
    return tuple(out)

"""Sums, means (and proportions) and variances over the union, from the sites' ``dp_sum``,
``dp_sum_of_squares`` and ``dp_count`` releases, with intervals for the *exact* statistic.

- sum: the noise's interval (``intervals.halfwidth``), widened by what rounding to the sums' lattice
  can move the sum (``N_hi * granularity / 2``, ``N_hi`` an upper confidence bound on the count);
- mean ``center + S / N``: test inversion (Fieller 1954), exact for the ratio of two noisy totals;
- variance ``(Q - S²/N) / (N - 1)``: projection of a Bonferroni box for ``(S, Q, N)`` (conservative).

Where several confidence statements combine, their misses add up (Bonferroni): each gets a stated
share of ``1 - level``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from fedcore.analytics.dp import Release, Statistic
from fedcore.analytics.intervals import Floats, Interval, check_releases, halfwidth, noise_draws
from fedcore.errors import AggregationError

__all__ = ["combine_mean", "combine_sum", "combine_variance"]


def _sums_and_counts(
    sums: Sequence[Release],
    counts: Sequence[Release],
    level: float,
    draws: int,
    kind: Statistic = Statistic.SUM,
) -> tuple[float, float]:
    """Check a statistic's sums and counts; its bounds."""
    check_releases(sums, [kind], level=level, draws=draws)
    check_releases(counts, [Statistic.COUNT], level=level, draws=draws)
    if sums[0].bounds is None:
        raise AggregationError("sum releases carry no bounds; build them with dp_sum")
    return sums[0].bounds


def _split(level: float, share: float) -> float:
    """The level of one of several intervals whose misses add up (Bonferroni): ``share`` of the miss."""
    return 1.0 - (1.0 - level) * share


def combine_sum(
    sums: Sequence[Release],
    counts: Sequence[Release],
    *,
    rng: np.random.Generator,
    level: float = 0.95,
    draws: int = 20_000,
) -> Interval:
    """Sum of the clamped values over the union, ``sum(clamp(v) - center)``, covering rounding too.

    Each site rounds its clamped values to its sum's lattice (``dp_sum``: ``granularity``, none for
    integer data), which moves the sum by at most ``N * granularity / 2``. The interval is the noise's
    (at 90% of the miss) widened by that with ``N`` at the count's upper bound (10% of the miss).
    """
    _sums_and_counts(sums, counts, level, draws)
    total = float(sum(r.value for r in sums))
    c = halfwidth(sums, _split(level, 0.9), rng, draws)
    n_hi = sum(r.value for r in counts) + halfwidth(counts, _split(level, 0.2), rng, draws)
    c += max(n_hi, 0.0) * max(r.granularity for r in sums) / 2
    return Interval(total, total - c, total + c, level)


def _mean(center: float, s: Floats | float, n: Floats | float, limits: tuple[float, float]) -> Floats:
    return np.clip(center + np.asarray(s) / np.maximum(n, 1.0), *limits)


def _accepted(t: Floats, s: float, n: float, eta: tuple[Floats, Floats], level: float) -> NDArray[np.bool_]:
    """Which offsets ``t`` (mean minus center) the level test keeps: ``|S - t N|`` within the
    ``level``-quantile of ``|η_S - t η_N|``, its distribution when the mean is ``center + t``."""
    spread = np.abs(eta[0][None, :] - t[:, None] * eta[1][None, :])
    return np.abs(s - t * n) <= np.quantile(spread, level, axis=1, method="inverted_cdf")


def _boundary(outside: float, inside: float, keep: tuple[float, float, Floats, Floats, float]) -> float:
    """Bisect between a rejected and a kept offset; the last rejected one (conservative)."""
    s, n, eta_s, eta_n, level = keep
    for _ in range(12):  # to 1/4096 of a grid step
        mid = (outside + inside) / 2
        if _accepted(np.array([mid]), s, n, (eta_s, eta_n), level)[0]:
            inside = mid
        else:
            outside = mid
    return outside


def _fieller(
    s: float, n: float, eta: tuple[Floats, Floats], limits: tuple[float, float], level: float
) -> tuple[float, float] | None:
    """The offsets ``t`` in ``limits`` the test keeps (Fieller 1954): the hull of a 33-point grid's,
    refined by bisection; ``None`` if none is kept. Each draw of ``|η_S - t η_N|`` is convex in ``t``,
    so at most its larger value at the limits: every ``t`` kept has ``|S - t N| <= m``, ``m`` the
    ``level``-quantile of that larger value, and lies within ``m / N`` of ``S / N`` (the grid's window)."""
    lo, hi = limits
    if n <= 0:
        return limits
    ends = np.maximum(np.abs(eta[0] - lo * eta[1]), np.abs(eta[0] - hi * eta[1]))
    reach = float(np.quantile(ends, level, method="inverted_cdf")) / n
    w_lo, w_hi = max(lo, s / n - reach), min(hi, s / n + reach)
    if w_lo > w_hi:
        return None
    grid = np.linspace(w_lo, w_hi, 33)
    kept = np.flatnonzero(_accepted(grid, s, n, eta, level))
    if not kept.size:
        return None
    keep = (s, n, eta[0], eta[1], level)
    first, last = int(kept[0]), int(kept[-1])
    low = w_lo if first == 0 else _boundary(float(grid[first - 1]), float(grid[first]), keep)
    high = w_hi if last == len(grid) - 1 else _boundary(float(grid[last + 1]), float(grid[last]), keep)
    return low, high


def combine_mean(
    sums: Sequence[Release],
    counts: Sequence[Release],
    *,
    rng: np.random.Generator,
    level: float = 0.95,
    draws: int = 20_000,
) -> Interval:
    """Mean of the clamped values over the union, ``center + S / N``, by test inversion.

    ``S`` and ``N`` are the summed ``dp_sum`` and ``dp_count`` releases (one of each per site, same
    bounds and center). If ``μ`` is the mean of the values on the lattice, ``S - (μ - center) N =
    η_S - (μ - center) η_N`` (the noises), a known distribution for each ``μ``: the interval is
    every ``μ`` in the bounds whose test at ``level`` keeps it (Fieller 1954), exact whatever ``N``,
    skew or ties (the plug-in bootstrap it replaces covered 0.47-0.64 for 15-100 rows near a bound).
    It is widened by half the sums' lattice step (rounding moves the mean by at most that). The
    estimate ``center + S / N`` is clipped to the bounds and into the interval.
    """
    lo, hi = _sums_and_counts(sums, counts, level, draws)
    center = sums[0].center
    s, n = sum(r.value for r in sums), sum(r.value for r in counts)
    eta = (noise_draws(rng, sums, (draws,)), noise_draws(rng, counts, (draws,)))
    found = _fieller(s, n, eta, (lo - center, hi - center), level)
    estimate = float(_mean(center, s, n, (lo, hi)))
    if found is None:  # no mean in the bounds fits (probability <= 1 - level)
        return Interval(estimate, estimate, estimate, level)
    half = max(r.granularity for r in sums) / 2
    low, high = max(lo, center + found[0] - half), min(hi, center + found[1] + half)
    return Interval(float(np.clip(estimate, low, high)), low, high, level)


def _variance(s: Floats | float, q: Floats | float, n: Floats | float, cap: float) -> Floats:
    n = np.maximum(n, 2.0)
    return np.clip((np.asarray(q) - np.asarray(s) ** 2 / n) / (n - 1), 0.0, cap)


def _counts_between(lo: float, hi: float, s2: float, q: float) -> list[float]:
    """``lo``, ``hi`` and the critical points of ``(q - s2 / n) / (n - 1)`` between them."""
    out = [lo, hi]
    if q > 0 and s2 >= q:
        root = np.sqrt(s2 * s2 - q * s2)
        out += [n for n in ((s2 - root) / q, (s2 + root) / q) if lo < n < hi]
    return out


def _projected(box: tuple[tuple[float, float], ...], cap: float) -> tuple[float, float]:
    """Smallest and largest variance over the box of ``(S, Q, N)``: largest ``Q`` with the ``S``
    nearest 0, smallest ``Q`` with the ``S`` farthest, at the box's counts and critical counts."""
    (s_lo, s_hi), (q_lo, q_hi), (n_lo, n_hi) = box
    if n_lo < 2:
        return 0.0, cap
    s2_min = 0.0 if s_lo <= 0 <= s_hi else min(s_lo * s_lo, s_hi * s_hi)
    s2_max = max(s_lo * s_lo, s_hi * s_hi)
    high = max(float(_variance(s2_min**0.5, q_hi, n, cap)) for n in _counts_between(n_lo, n_hi, s2_min, q_hi))
    low = min(float(_variance(s2_max**0.5, q_lo, n, cap)) for n in _counts_between(n_lo, n_hi, s2_max, q_lo))
    return low, high


def combine_variance(
    sums: Sequence[Release],
    squares: Sequence[Release],
    counts: Sequence[Release],
    *,
    rng: np.random.Generator,
    level: float = 0.95,
    draws: int = 20_000,
) -> Interval:
    """Sample variance of the clamped values over the union, ``(Q - S²/N) / (N - 1)``.

    ``S`` and ``Q`` are summed ``dp_sum`` and ``dp_sum_of_squares`` releases with the same bounds and
    center (the variance does not depend on the center). The interval is the range of the variance
    over a box holding the exact ``(S, Q, N)`` with probability >= ``level``: each side at a third of
    the miss (Bonferroni), the sums' sides widened by their rounding (``N_hi * granularity / 2``).
    Conservative (coverage above ``level``). Variances are clipped to ``[0, (hi - lo)**2 / 2]``.
    """
    _sums_and_counts(sums, counts, level, draws)
    lo, hi = _sums_and_counts(squares, counts, level, draws, Statistic.SUM_OF_SQUARES)
    if (sums[0].bounds, sums[0].center) != (squares[0].bounds, squares[0].center):
        raise AggregationError("sums and sums of squares must share bounds and center")
    cap, third = (hi - lo) ** 2 / 2, _split(level, 1 / 3)
    s, q, n = (sum(r.value for r in group) for group in (sums, squares, counts))
    c_n = halfwidth(counts, third, rng, draws)
    box = [(n - c_n, n + c_n)]
    for total, group in ((q, squares), (s, sums)):
        c = halfwidth(group, third, rng, draws) + max(n + c_n, 0.0) * group[0].granularity / 2
        box.insert(0, (total - c, total + c))
    low, high = _projected(tuple(box), cap)
    return Interval(float(np.clip(_variance(s, q, n, cap), low, high)), low, high, level)

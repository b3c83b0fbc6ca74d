"""The smallest noise that meets a target epsilon: a root search on log(epsilon) against log(noise).

A noise-scaled mechanism's epsilon falls as its noise multiplier ``sigma`` grows, and for the
Gaussian family (DP-SGD's subsampled Gaussian included) ``log epsilon`` is close to linear in
``log sigma`` (``epsilon ~ c / sigma`` for small epsilon; Balle & Wang 2018, "Improving the Gaussian
Mechanism for Differential Privacy", Sec. 3). ``smallest_noise`` therefore runs secant steps on
``g(t) = log(epsilon(e^t) / target)`` from a closed-form estimate and stops at the first noise whose epsilon
lies in the window ``[target (1 - rtol), target]``: typically 3-5 accountant calls where a
bracket-then-Brent search from scratch (``dp_accounting.calibrate_dp_mechanism``) makes 15-20. Once
the root is bracketed, a step that leaves the bracket is replaced by bisection, so the search always
ends. Only ``spend`` (the caller's ``dp_accounting`` accountant) computes epsilon: the answer is a
noise that was measured to spend at most ``target``, never an extrapolation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fedcore.errors import PrivacyError

__all__ = ["smallest_noise"]

_MAX_STEP = 4.0  # at most a factor e^4 ~ 55 in sigma per secant step
_MAX_CALLS = 80


def smallest_noise(
    spend: Callable[[float], float],
    *,
    target: float,
    rtol: float = 1e-3,
    start: float = 1.0,
    bounds: tuple[float, float] = (1e-3, 1e6),
) -> float:
    """A noise multiplier ``sigma`` with ``target * (1 - rtol) <= spend(sigma) <= target``.

    Parameters
    ----------
    spend
        ``sigma -> epsilon``, decreasing in ``sigma`` (a ``dp_accounting`` accountant's answer).
    target
        The epsilon to meet, > 0.
    rtol
        Relative width of the accepted window below ``target`` (in (0, 1)).
    start
        The first noise tried (a closed-form estimate saves accountant calls; clipped to ``bounds``).
    bounds
        The noise multipliers searched; ``PrivacyError`` when the window lies outside them.
    """
    if not (math.isfinite(target) and target > 0) or not 0 < rtol < 1:
        raise PrivacyError(f"target must be > 0 and rtol in (0, 1), got target {target}, rtol {rtol}")
    low, high = math.log(1 - rtol), 0.0  # the window of g
    aim = low / 2
    pos, neg = -math.inf, math.inf  # bracket: g(pos) > high (too little noise), g(neg) < low
    t, slope, prev = math.log(min(max(start, bounds[0]), bounds[1])), -1.0, None
    for _ in range(_MAX_CALLS):
        g = math.log(max(spend(math.exp(t)), 1e-300) / target)
        if low <= g <= high:
            return math.exp(t)
        pos, neg = (max(pos, t), neg) if g > high else (pos, min(neg, t))
        if prev is not None and t != prev[0] and (g - prev[1]) / (t - prev[0]) < 0:
            slope = (g - prev[1]) / (t - prev[0])
        prev = (t, g)
        step = max(-_MAX_STEP, min(_MAX_STEP, (aim - g) / slope))
        t = _inside(t + step, pos, neg, bounds)
    raise PrivacyError(f"noise calibration did not converge in {_MAX_CALLS} steps (target {target:g})")


def _inside(t: float, pos: float, neg: float, bounds: tuple[float, float]) -> float:
    """``t`` if it lies strictly in the bracket ``(pos, neg)`` and in ``bounds``; else the bracket's
    midpoint, or the bound (``PrivacyError`` once that bound was tried and missed the window)."""
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    if math.isfinite(pos) and math.isfinite(neg):
        return t if pos < t < neg else (pos + neg) / 2
    if pos >= hi:
        raise PrivacyError(f"no noise multiplier <= {bounds[1]:g} meets the target epsilon")
    if neg <= lo:
        raise PrivacyError(f"the target epsilon is met even with noise multiplier {bounds[0]:g}; lower it")
    return min(hi, max(lo, t, pos), neg)

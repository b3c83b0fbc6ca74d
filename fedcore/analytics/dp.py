"""One site's DP statistics: each one OpenDP measurement, released with its ``dp_accounting`` event.

Rows are clamped to public bounds (from the schema or the query, never the data). Only OpenDP's
``"contrib"`` feature is enabled: all noise is added to *integer* queries. (OpenDP 0.16 renamed
``"floating-point"`` to ``"idealized-numerics"``, which gates only its numpy extras, and warns on the
old name; neither is needed.) Neighbours differ by one added or removed row (one person): OpenDP's
``symmetric_distance`` at ``d_in = 1``, dp_accounting's ``ADD_OR_REMOVE_ONE``.

Noise: ``make_laplace`` on an integer query samples the discrete Laplace ``P(x) ∝ exp(-|x| / scale)``
(Ghosh, Roughgarden & Sundararajan 2012; Canonne, Kamath & Steinke 2020, §5.2); for L1 sensitivity
``Δ`` OpenDP's privacy map is ``Δ / scale``. Its exact event is
``DiscreteLaplaceDpEvent(noise_parameter=1/scale, sensitivity=Δ)``. ``LaplaceDpEvent(scale/Δ)`` has
the same pure epsilon but the continuous privacy-loss distribution: at ``Δ = 1`` the discrete
mechanism is randomized response, whose composition costs more at ``δ > 0`` (100 counts at epsilon 1:
83.5 vs 71.5 at ``δ = 1e-6``), so it would under-charge. Compose with PLD (RDP lacks the event).

Means and variances are formed at the coordinator (``fedcore.analytics.moments``): for a mean give
half the site's epsilon to ``dp_count`` and half to ``dp_sum``; for a variance a third each to
``dp_count``, ``dp_sum`` and ``dp_sum_of_squares``. Pass ``center=(lo + hi) / 2`` to the sums: the
sum's sensitivity drops from ``max(|lo|, |hi|)`` to ``(hi - lo) / 2``, the squares' up to 4x.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import opendp.prelude as dp
from dp_accounting import dp_event
from numpy.typing import ArrayLike, NDArray
from scipy.stats import nbinom

from fedcore.errors import PrivacyError

__all__ = [
    "OTHER",
    "Release",
    "Share",
    "Statistic",
    "dp_count",
    "dp_histogram",
    "dp_quantiles",
    "dp_sum",
    "dp_sum_of_squares",
    "tree_layers",
]

OTHER = "<other>"
"""Label of the histogram bucket that counts rows outside the categories (OpenDP's null category)."""

_RESOLUTION_BITS = 15
"""Automatic sum resolution: a power of two with ``2**15 <= sensitivity / resolution < 2**16``."""

_SHARE_RESOLUTION_BITS = 8
"""The same under HE (``share``): 2**8 to 2**9 steps, so that a total of 10**6 rows fits in a BFV slot."""


class Statistic(Enum):
    """What a release holds."""

    COUNT = "count"
    SUM = "sum"
    SUM_OF_SQUARES = "sum_of_squares"
    HISTOGRAM = "histogram"
    QUANTILES = "quantiles"


@dataclass(frozen=True)
class Release:
    """One site's noisy answer: all a coordinator needs to combine it with other sites' answers.

    ``values`` are the released numbers: one for counts and sums; the category counts then the
    ``OTHER`` count for a histogram; the noisy b-ary tree (breadth-first, root first) for quantiles.
    Each carries independent discrete Laplace noise of ``scale`` on the lattice ``granularity``
    (``scale / granularity`` in lattice units). ``sensitivity`` is the L1 sensitivity of ``values`` to
    adding or removing one row; ``epsilon`` is OpenDP's privacy map at one row, ``event`` its
    ``dp_accounting`` event. ``center`` was subtracted from every clamped value before summing;
    a quantile tree's bins have ``edges``; its ``quantiles`` are estimated by the coordinator
    (``quantiles.combine_quantiles``).
    """

    statistic: Statistic
    values: tuple[float, ...]
    scale: float
    granularity: float
    sensitivity: float
    epsilon: float
    event: dp_event.DpEvent
    bounds: tuple[float, float] | None = None
    center: float = 0.0
    categories: tuple[str | int, ...] = ()
    quantiles: tuple[float, ...] = ()
    edges: tuple[float, ...] = ()
    branching_factor: int = 0
    shape: float = 1.0
    """Polya shape of the noise: 1 is one discrete Laplace; a site's HE share is ``1 / k`` (``Share``)
    and a decrypted sum of shares has the sum of their shapes (1 when ``k`` shares add up)."""

    @property
    def value(self) -> float:
        """The released number of a count or sum; raises for multi-valued releases."""
        if len(self.values) != 1:
            raise PrivacyError(f"a {self.statistic.value} release has {len(self.values)} values; use .values")
        return self.values[0]


@dataclass(frozen=True)
class Share:
    """A site's part of distributed noise: Polya ``fraction`` of a discrete Laplace (Goryczka & Xiong
    2017; Balle et al. 2020): ``NB(f, 1 - a) - NB(f, 1 - a)``, ``a = exp(-1 / scale)``. Shares of
    fractions adding up to 1 sum to exactly the discrete Laplace of ``scale`` (a geometric is a sum of
    negative binomials), so ``1 / k`` from each of ``k`` sites equals central noise, with no curator.

    Drawn by inversion (scipy's ``nbinom.ppf``) of uniforms from ``uniforms`` (the site's CSPRNG).
    OpenDP has no such sampler; its ``make_laplace`` is used whenever a site adds its full noise.
    """

    fraction: float
    uniforms: Callable[[int], NDArray[np.float64]]

    def draw(self, scale: float, n: int) -> NDArray[np.int64]:
        """``n`` share draws on the integer lattice, for a discrete Laplace of ``scale`` (lattice units)."""
        if not (0 < self.fraction <= 1 and math.isfinite(scale) and scale > 0):
            raise PrivacyError(
                f"a noise share needs 0 < fraction <= 1 and scale > 0, got {self.fraction}, {scale}"
            )
        p = -math.expm1(-1.0 / scale)
        u = np.clip(self.uniforms(2 * n), 0.0, 1.0 - 2.0**-53)
        k: NDArray[np.int64] = np.asarray(nbinom.ppf(u, self.fraction, p), dtype=np.int64)
        return k[:n] - k[n:]


def _shared(share: Share, exact: Any, scale: float) -> tuple[float, ...]:
    """Exact integer query output plus ``share`` of noise of ``scale`` (lattice units)."""
    ints = np.atleast_1d(np.asarray(exact, dtype=np.int64))
    return tuple(float(v) for v in ints + share.draw(scale, ints.size))


def _shape(share: Share | None) -> float:
    return 1.0 if share is None else share.fraction


def _contrib() -> None:
    dp.enable_features("contrib")  # every constructor used here is contrib; idempotent


def _validate(
    *,
    epsilon: float,
    bounds: tuple[float, float] = (0.0, 1.0),
    center: float = 0.0,
    resolution: float | None = None,
    unit_rows: int = 1,
    extra: Sequence[str] = (),
) -> None:
    """Raise one ``PrivacyError`` listing every invalid parameter (``extra``: the caller's own)."""
    problems = list(extra)
    if isinstance(unit_rows, bool) or not isinstance(unit_rows, int) or unit_rows < 1:
        problems.append(f"unit_rows must be an int >= 1, got {unit_rows!r}")
    if not (math.isfinite(epsilon) and epsilon > 0):
        problems.append(f"epsilon must be finite and > 0, got {epsilon}")
    if not (math.isfinite(bounds[0]) and math.isfinite(bounds[1]) and bounds[0] < bounds[1]):
        problems.append(f"bounds must be finite with lo < hi, got {bounds}")
    if not math.isfinite(center):
        problems.append(f"center must be finite, got {center}")
    if resolution is not None and not (math.isfinite(resolution) and resolution > 0):
        problems.append(f"resolution must be finite and > 0 (or None for automatic), got {resolution}")
    if problems:
        raise PrivacyError("; ".join(problems))


def _finite(values: ArrayLike) -> NDArray[np.float64]:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise PrivacyError(f"values must be a 1-D array of finite numbers, got shape {x.shape}; drop NaNs")
    return x


def _spent(meas: dp.Measurement, epsilon: float, unit_rows: int = 1) -> float:
    """OpenDP's privacy map at one unit (``unit_rows`` rows: group privacy on the symmetric or
    absolute distance); refuses a measurement that would exceed ``epsilon``."""
    spent = float(meas.map(unit_rows))  # type: ignore[no-untyped-call]
    if spent > epsilon * (1 + 1e-9):
        raise PrivacyError(f"OpenDP's privacy map gives epsilon {spent} > requested {epsilon}")
    return spent


def _event(scale: float, sensitivity: int, count: int = 1) -> dp_event.DpEvent:
    event = dp_event.DiscreteLaplaceDpEvent(noise_parameter=1.0 / scale, sensitivity=int(sensitivity))
    return event if count == 1 else dp_event.SelfComposedDpEvent(event, count)


def dp_count(n_rows: int, *, epsilon: float, share: Share | None = None, unit_rows: int = 1) -> Release:
    """Number of rows plus discrete Laplace noise of scale ``unit_rows / epsilon`` (OpenDP
    ``make_laplace``).

    A count moves by one when a row is added or removed (OpenDP's ``make_count`` is 1-stable), by
    ``unit_rows`` when a unit (a customer) with at most that many rows is, so the measurement is
    ``make_laplace`` on the integer count, mapped at ``d_in = unit_rows``.
    """
    bad = isinstance(n_rows, bool) or not isinstance(n_rows, int | np.integer) or n_rows < 0
    extra = [f"n_rows must be an int >= 0, got {n_rows!r}"] if bad else []
    _validate(epsilon=epsilon, unit_rows=unit_rows, extra=extra)
    _contrib()
    scale = unit_rows / epsilon
    meas = dp.m.make_laplace(dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"), scale=scale)
    spent = _spent(meas, epsilon, unit_rows)
    values = (float(meas(int(n_rows))),) if share is None else _shared(share, int(n_rows), scale)
    return Release(
        Statistic.COUNT, values, scale, 1.0, float(unit_rows), spent, _event(scale, unit_rows),
        shape=_shape(share),
    )  # fmt: skip


def _integer_sum(
    kind: Statistic, x: NDArray[np.float64], sum_bounds: tuple[float, float], *, bounds: tuple[float, float],
    center: float, epsilon: float, resolution: float | None, share: Share | None, unit_rows: int,
) -> Release:  # fmt: skip
    """OpenDP's integer clamp, sum and Laplace on ``x`` (within ``sum_bounds``) in steps of ``resolution``."""
    lo, hi = sum_bounds
    top = max(abs(lo), abs(hi))
    bits = _RESOLUTION_BITS if share is None else _SHARE_RESOLUTION_BITS
    res = resolution if resolution is not None else 2.0 ** (math.floor(math.log2(top)) - bits)
    lo_i, hi_i = math.floor(lo / res), math.ceil(hi / res)
    sens_i = max(abs(lo_i), abs(hi_i)) * unit_rows  # per unit: at most unit_rows rows
    trans = (
        (dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance())
        >> dp.t.then_clamp((lo_i, hi_i))
        >> dp.t.then_sum()  # type: ignore[no-untyped-call]
    )
    meas = trans >> dp.m.then_laplace(scale=sens_i / epsilon)
    spent = _spent(meas, epsilon, unit_rows)
    ints = np.rint(np.clip(x, lo, hi) / res).astype(np.int64).tolist()
    lattice = (meas(ints),) if share is None else _shared(share, trans(ints), sens_i / epsilon)
    return Release(
        kind, tuple(v * res for v in lattice), sens_i / epsilon * res, res, sens_i * res, spent,
        _event(sens_i / epsilon, sens_i), (float(bounds[0]), float(bounds[1])), float(center),
        shape=_shape(share),
    )  # fmt: skip


def dp_sum(
    values: ArrayLike,
    *,
    bounds: tuple[float, float],
    epsilon: float,
    center: float = 0.0,
    resolution: float | None = None,
    share: Share | None = None,
    unit_rows: int = 1,
) -> Release:
    """``sum(clamp(v, *bounds) - center)`` plus discrete Laplace noise: an integer-scaled sum.

    Clamped, shifted values are rounded to multiples of ``resolution`` (default: the power of two
    giving 2**15 to 2**16 steps per unit of sensitivity; pass 1 for integer data: no rounding). OpenDP
    then clamps to the integer bounds, sums (``make_sum``; sensitivity ``max(|lo - c|, |hi - c|)``)
    and adds ``make_laplace`` noise. Chosen over OpenDP's float sum, whose rounding-aware sensitivity
    (Casacuberta et al. 2022) exceeds the bound (90.0000008 for bounds (20, 90)), so its epsilon is
    not the one asked for nor its event exact: this sum is exactly ``epsilon``-DP, its event exact, its
    noise lattice known to the intervals. Rounding moves a row by at most ``resolution / 2``.
    ``unit_rows``: the privacy unit has at most this many rows (the caller bounds them): the
    sensitivity and the noise scale are that many times a row's.
    """
    _validate(epsilon=epsilon, bounds=bounds, center=center, resolution=resolution, unit_rows=unit_rows)
    _contrib()
    x = np.clip(_finite(values), *bounds) - center
    shifted = (bounds[0] - center, bounds[1] - center)
    return _integer_sum(
        Statistic.SUM, x, shifted, bounds=bounds, center=center, epsilon=epsilon, resolution=resolution,
        share=share, unit_rows=unit_rows,
    )  # fmt: skip


def dp_sum_of_squares(
    values: ArrayLike,
    *,
    bounds: tuple[float, float],
    epsilon: float,
    center: float = 0.0,
    resolution: float | None = None,
    share: Share | None = None,
    unit_rows: int = 1,
) -> Release:
    """``sum((clamp(v, *bounds) - center) ** 2)`` plus noise, as ``dp_sum`` (for variances).

    The squares lie in ``[s_lo, s_hi]``, ``s_hi = max((lo - c)**2, (hi - c)**2)``, ``s_lo = 0`` when
    ``lo <= c <= hi`` (else the smaller square); the sensitivity is ``s_hi`` (per row).
    """
    _validate(epsilon=epsilon, bounds=bounds, center=center, resolution=resolution, unit_rows=unit_rows)
    _contrib()
    lo, hi = bounds[0] - center, bounds[1] - center
    squares = (np.clip(_finite(values), *bounds) - center) ** 2
    sq_bounds = (0.0 if lo <= 0 <= hi else min(lo * lo, hi * hi), max(lo * lo, hi * hi))
    return _integer_sum(
        Statistic.SUM_OF_SQUARES, squares, sq_bounds, bounds=bounds, center=center, epsilon=epsilon,
        resolution=resolution, share=share, unit_rows=unit_rows,
    )  # fmt: skip


def _category_type(categories: Sequence[str | int]) -> str | None:
    """OpenDP atom type of the categories (``String`` or ``i64``), ``None`` if neither."""
    if all(isinstance(c, str) for c in categories):
        return "String"
    if all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in categories):
        return "i64"
    return None


def dp_histogram(
    values: ArrayLike,
    *,
    categories: Sequence[str | int],
    epsilon: float,
    share: Share | None = None,
    unit_rows: int = 1,
) -> Release:
    """Counts of ``values`` per category, then of all other rows (``OTHER``), each plus noise.

    OpenDP ``make_count_by_categories`` (its null category is ``OTHER``) then ``make_laplace`` of scale
    ``1 / epsilon`` on every count. A row added or removed moves one count by one: L1 sensitivity 1,
    so the whole vector is ``epsilon``-DP, one discrete Laplace event of sensitivity 1 (``unit_rows``
    for units of at most that many rows: scale ``unit_rows / epsilon``).
    """
    kind = _category_type(categories)
    problems = [] if kind else [f"categories must be all str or all int, got {list(categories)[:5]!r}"]
    if not categories or len(set(categories)) != len(categories):
        problems.append(f"categories must be non-empty and distinct, got {list(categories)[:5]!r}")
    _validate(epsilon=epsilon, unit_rows=unit_rows, extra=problems)
    cats = [c if isinstance(c, str) else int(c) for c in categories]
    rows = np.asarray(values).ravel().tolist()
    if kind == "i64" and not all(isinstance(v, int) or float(v).is_integer() for v in rows):
        raise PrivacyError("int categories need integer values; map other values to a category first")
    rows = [str(v) if kind == "String" else int(v) for v in rows]
    _contrib()
    scale = unit_rows / epsilon
    trans = (
        dp.vector_domain(dp.atom_domain(T=kind)),
        dp.symmetric_distance(),
    ) >> dp.t.then_count_by_categories(cats, null_category=True, MO=dp.L1Distance["i64"], TOA="i64")
    meas = trans >> dp.m.then_laplace(scale=scale)
    spent = _spent(meas, epsilon, unit_rows)
    noisy = tuple(float(v) for v in meas(rows)) if share is None else _shared(share, trans(rows), scale)
    return Release(
        Statistic.HISTOGRAM, noisy, scale, 1.0, float(unit_rows), spent, _event(scale, unit_rows),
        categories=tuple(cats),
        shape=_shape(share),
    )  # fmt: skip


def tree_layers(bins: int, branching_factor: int) -> int:
    """Layers of the complete b-ary tree over ``bins`` leaves; ``bins`` must be a power >= 1 of ``b >= 2``."""
    layers = round(math.log(bins, branching_factor)) + 1 if bins >= 1 and branching_factor >= 2 else 0
    if layers < 2 or branching_factor ** (layers - 1) != bins:
        raise PrivacyError(
            f"bins must be a power >= 1 of branching_factor >= 2, got bins={bins}, "
            f"branching_factor={branching_factor}; e.g. bins=64 with branching_factor 4 or 8"
        )
    return layers


def _tree(edges: list[float], branching_factor: int) -> dp.Transformation:
    """Clamp, bin, count per bin, expand to a b-ary tree of counts."""
    bins = len(edges) - 1
    trans: dp.Transformation = (
        (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance())
        >> dp.t.then_clamp((edges[0], edges[-1]))
        >> dp.t.then_find_bin(edges=edges[1:-1])  # type: ignore[no-untyped-call]
        >> dp.t.then_count_by_categories(
            list(range(bins)), null_category=False, MO=dp.L1Distance["i64"], TOA="i64"
        )
        >> dp.t.then_b_ary_tree(leaf_count=bins, branching_factor=branching_factor)
    )
    return trans


def dp_quantiles(
    values: ArrayLike,
    *,
    bounds: tuple[float, float],
    quantiles: Sequence[float],
    epsilon: float,
    bins: int = 64,
    branching_factor: int = 4,
    share: Share | None = None,
    unit_rows: int = 1,
) -> Release:
    """Quantiles from a noisy b-ary tree of bin counts (Hay et al. 2010; Qardaji, Yang & Li 2013).

    OpenDP ``make_clamp`` to ``bounds``, ``make_find_bin`` into ``bins`` equal-width bins,
    ``make_count_by_categories``, ``make_b_ary_tree`` and ``make_laplace``. A row adds one to one node
    per layer, so the tree's L1 sensitivity is its number of layers ``L`` and every node gets scale
    ``L / epsilon``: the epsilon is split evenly over the layers, and all ``quantiles`` are
    post-processing of the one tree (no split between quantiles). Released: the noisy tree only; the
    estimates and intervals are post-processing at the coordinator (``quantiles.combine_quantiles``).
    Event: ``L`` composed discrete Laplace releases of sensitivity 1 (exact: a row moves one node per
    layer by one).
    """
    try:
        layers, problems = tree_layers(bins, branching_factor), []
    except PrivacyError as err:
        layers, problems = 0, [str(err)]
    if not quantiles or not all(0 < q < 1 for q in quantiles):
        problems.append(f"quantiles must be a non-empty sequence in (0, 1), got {list(quantiles)!r}")
    _validate(epsilon=epsilon, bounds=bounds, unit_rows=unit_rows, extra=problems)
    x = _finite(values)
    _contrib()
    edges = [float(e) for e in np.linspace(bounds[0], bounds[1], bins + 1)]
    trans = _tree(edges, branching_factor)
    scale = layers * unit_rows / epsilon
    meas = trans >> dp.m.then_laplace(scale=scale)
    spent = _spent(meas, epsilon, unit_rows)
    if share is None:
        values = tuple(float(v) for v in meas(x.tolist()))
    else:  # under HE: a share of the noise; this site's tree is never seen alone
        values = _shared(share, trans(x.tolist()), scale)
    return Release(
        Statistic.QUANTILES, values, scale, 1.0, float(layers * unit_rows), spent,
        _event(scale, unit_rows, layers), (edges[0], edges[-1]),
        quantiles=tuple(float(q) for q in quantiles), edges=tuple(edges),
        branching_factor=branching_factor, shape=1.0 if share is None else share.fraction,
    )  # fmt: skip

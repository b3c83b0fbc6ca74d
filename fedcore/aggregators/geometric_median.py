"""Geometric median by the smoothed Weiszfeld algorithm: RFA (Pillutla, Kakade, Harchaoui 2022,
"Robust Aggregation for Federated Learning", IEEE TSP, Sec. III, Alg. 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from fedcore.aggregators._robust import Matrix, check_count, require_updates, stack
from fedcore.aggregators.base import AggregateResult, ClientUpdate
from fedcore.errors import ConfigError

__all__ = ["GeometricMedian", "Weighting", "weiszfeld"]

Weighting = Literal["uniform", "counts"]


@dataclass(frozen=True)
class GeometricMedian:
    """Step = argmin_v sum_i alpha_i max(eps, ||v - x_i||), the (smoothed) geometric median.

    The geometric median has breakdown point 1/2: fewer than half arbitrary updates move it by a
    bounded amount however far they are (Pillutla et al. 2022, Thm. 3). ``f`` only states how many
    the job means to tolerate, so that a round with ``n < 2f + 1`` is refused.

    Example counts: ignored by default (``weighting="uniform"``, ``alpha_i = 1/n``).
    ``weighting="counts"`` is RFA's ``alpha_i = n_i / sum n_j``; its breakdown point is then half
    the *claimed* examples, so one site that over-reports its count owns the result. Use it only
    where counts are trusted.

    Parameters
    ----------
    f
        Arbitrary updates tolerated per round; ``n >= 2f + 1``.
    iterations
        At most this many Weiszfeld steps (RFA uses a handful; converged runs stop earlier).
    eps
        ``nu``, the smoothing: distances below ``eps`` count as ``eps`` (no division by zero when
        the estimate hits an update).
    tol
        Stop when the objective improves by less than ``tol`` times its value.
    weighting
        ``"uniform"`` or ``"counts"`` (above).

    Metrics: ``geomed_iterations``, ``geomed_objective`` and ``geomed_weight[<site>]``, the final
    Weiszfeld weight of each update (small for outliers; they sum to 1).
    """

    f: int = 1
    iterations: int = 100
    eps: float = 1e-6
    tol: float = 1e-10
    weighting: Weighting = "uniform"

    def __post_init__(self) -> None:
        problems = check_count("f", self.f, low=0) + check_count("iterations", self.iterations, low=1)
        for name, value in (("eps", self.eps), ("tol", self.tol)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                problems.append(f"{name} must be finite and > 0, got {value!r}")
        if self.weighting not in get_args(Weighting):
            problems.append(f"weighting must be one of 'uniform', 'counts', got {self.weighting!r}")
        if problems:
            raise ConfigError("geometric_median: " + "; ".join(problems))

    def min_updates(self) -> int:
        """``2f + 1``: honest updates must be a strict majority."""
        return 2 * self.f + 1

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        st = stack(updates)
        n = len(st.labels)
        require_updates(
            "geometric_median", n, need=self.min_updates(), setting=f"f={self.f}", formula="n >= 2f + 1"
        )
        alpha = st.counts / st.counts.sum() if self.weighting == "counts" else np.full(n, 1.0 / n)
        v, beta, used = weiszfeld(st.matrix, alpha, iterations=self.iterations, eps=self.eps, tol=self.tol)
        metrics = {"geomed_iterations": float(used)}
        metrics["geomed_objective"] = _objective(st.matrix, alpha, v, self.eps)
        metrics |= {f"geomed_weight[{label}]": float(b) for label, b in zip(st.labels, beta, strict=True)}
        return AggregateResult(step=st.unflatten(v), metrics=metrics)


def _objective(x: Matrix, alpha: Matrix, v: Matrix, eps: float) -> float:
    return float(np.sum(alpha * np.maximum(np.linalg.norm(x - v, axis=1), eps)))


def weiszfeld(
    x: Matrix, alpha: Matrix, *, iterations: int, eps: float, tol: float
) -> tuple[Matrix, Matrix, int]:
    """Smoothed Weiszfeld (RFA Alg. 2) from the coordinate-wise median of the rows of ``x``.

    ``v <- sum_i beta_i x_i / sum_i beta_i`` with ``beta_i = alpha_i / max(eps, ||v - x_i||)``.
    Returns ``(v, beta normalised to sum 1, iterations run)``. Starting at the coordinate median
    (RFA starts at the mean) puts far outliers far from the start, so few steps are needed.
    """
    v: Matrix = np.median(x, axis=0)
    value = _objective(x, alpha, v, eps)
    beta = alpha
    for used in range(1, iterations + 1):
        beta = alpha / np.maximum(np.linalg.norm(x - v, axis=1), eps)
        v = beta @ x / beta.sum()
        new = _objective(x, alpha, v, eps)
        if value - new <= tol * new:
            return v, beta / beta.sum(), used
        value = new
    return v, beta / beta.sum(), iterations

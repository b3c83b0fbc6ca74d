"""Centered clipping (Karimireddy, He, Jaggi 2021, "Learning from History for Byzantine Robust
Optimization", ICML, Sec. 4, Eq. CC): clip every update around the previous round's aggregate."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedcore.aggregators._robust import Matrix, check_count, require_updates, stack
from fedcore.aggregators.base import AggregateResult, Arrays, ClientUpdate
from fedcore.errors import AggregationError, ConfigError

__all__ = ["CenteredClipping"]


class CenteredClipping:
    """``v <- v + (1/n) sum_i clip_tau(x_i - v)``, ``iterations`` times; the step is the final ``v``.

    ``clip_tau(z) = z min(1, tau / ||z||)``. ``v`` starts at the previous round's step (the paper's
    momentum "history"; zero in round 1) and is the aggregator's state, checkpointed with
    ``state_arrays``: a resumed job continues from the same centre. Each update moves ``v`` by at
    most ``tau / n``, so ``f`` arbitrary updates move it at most ``f tau / n`` per iteration, while
    honest updates within ``tau`` of ``v`` pull it to their mean. With ``f`` of ``n`` arbitrary, a
    fixed point is within ``f tau / (n - f)`` of the honest mean (honest updates inside ``tau``).

    Example counts are ignored (weights ``1/n``, as in the paper): a count-weighted step would let a
    liar with a huge count move ``v`` by ``tau`` alone.

    Parameters
    ----------
    f
        Arbitrary updates tolerated per round; ``n >= 2f + 1`` (the paper's analysis needs a small
        Byzantine fraction, ``f / n <= 0.1`` or so, for its constants).
    tau
        The clipping radius, in the units of an update's L2 norm (> 0).
    iterations
        Clipping passes per round (the paper uses 1 with momentum; more converge from a cold start).

    Metrics: ``cc_clipped`` (updates clipped in the last pass), ``cc_shift`` (``||v_new - v_old||``)
    and ``cc_clipped[<site>] = 1`` for each of them.
    """

    def __init__(self, *, f: int = 1, tau: float = 1.0, iterations: int = 1) -> None:
        problems = check_count("f", f, low=0) + check_count("iterations", iterations, low=1)
        if not (isinstance(tau, int | float) and math.isfinite(tau) and tau > 0):
            problems.append(f"tau must be finite and > 0, got {tau!r}")
        if problems:
            raise ConfigError("centered_clipping: " + "; ".join(problems))
        self.f, self.tau, self.iterations = f, float(tau), iterations
        self._center: Arrays = ()

    def min_updates(self) -> int:
        """``2f + 1``: honest updates must be a strict majority."""
        return 2 * self.f + 1

    def state_arrays(self) -> Arrays:
        """The centre ``v`` (empty before round 1), copied."""
        return tuple(a.copy() for a in self._center)

    def load_state_arrays(self, state: Arrays) -> None:
        """Restore the centre ``state_arrays`` returned (empty: start from zero)."""
        self._center = tuple(np.array(a, dtype=np.float64) for a in state)

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        st = stack(updates)
        n = len(st.labels)
        require_updates(
            "centered_clipping", n, need=self.min_updates(), setting=f"f={self.f}", formula="n >= 2f + 1"
        )
        start = self._start(st.shapes)
        v, clipped = start, np.zeros(n, dtype=bool)
        for _ in range(self.iterations):
            v, clipped = clip_step(st.matrix, v, self.tau)
        self._center = st.unflatten(v)
        metrics = {"cc_clipped": float(clipped.sum()), "cc_shift": float(np.linalg.norm(v - start))}
        metrics |= {f"cc_clipped[{label}]": 1.0 for label, c in zip(st.labels, clipped, strict=True) if c}
        return AggregateResult(step=self._center, metrics=metrics)

    def _start(self, shapes: tuple[tuple[int, ...], ...]) -> Matrix:
        if not self._center:
            return np.zeros(sum(int(np.prod(s, dtype=np.int64)) for s in shapes))
        if tuple(a.shape for a in self._center) != shapes:
            raise AggregationError(
                f"centered_clipping: the kept centre has shapes {[a.shape for a in self._center]} but "
                f"this round's updates have {list(shapes)}; a new model needs a new aggregator"
            )
        return np.concatenate([a.ravel() for a in self._center])


def clip_step(x: Matrix, v: Matrix, tau: float) -> tuple[Matrix, Matrix]:
    """One centred-clipping pass: ``(v + mean_i clip_tau(x_i - v), which rows were clipped)``.

    A row at distance 0 from ``v`` contributes 0 (no division by its zero norm).
    """
    diff = x - v
    norms = np.linalg.norm(diff, axis=1)
    clipped = norms > tau
    scale = np.where(clipped, tau / np.where(clipped, norms, 1.0), 1.0)
    return v + (scale[:, None] * diff).mean(axis=0), clipped

"""Adaptive norm clipping as an aggregator wrapper, non-private (Andrew, Thakkar, McMahan, Ramaswamy
2021, "Differentially Private Learning with Adaptive Clipping", NeurIPS, Sec. 2, Alg. 1 without
noise)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from fedcore.aggregators.base import (
    AggregateResult,
    Aggregator,
    Arrays,
    ClientUpdate,
    RobustAggregator,
    aggregator_state,
    load_aggregator_state,
)
from fedcore.errors import AggregationError, ConfigError

__all__ = ["AdaptiveClipping"]


class AdaptiveClipping:
    """Clip every update to L2 norm ``C``, aggregate with ``inner``, then move ``C`` toward the
    ``target_quantile`` of the update norms: ``C <- C exp(-eta (b - gamma))``, ``b`` the fraction
    of this round's updates with norm ``<= C`` (Andrew et al. 2021, Eq. 2 and Alg. 1).

    A robustness tool: each update's influence on a mean is bounded by ``C / n`` whatever its size,
    and ``C`` follows the honest norms as they shrink during training (a fixed bound stops working
    once honest norms fall below it divided by an attacker's factor). It is *not* a DP mechanism:
    the private variant must noise the count ``b`` (and the sum), and in fedcore that noise would be
    charged at the sites (``fedcore.privacy.client_dp.ClientLevelDP(clipping="adaptive")`` is the
    in-process research version); nothing here is charged or noised.

    ``C`` is state (with ``inner``'s own state after it), checkpointed by ``state_arrays``. The
    fraction ``b`` is unweighted: a self-reported count must not move the clipping norm. What the
    step does with counts is ``inner``'s rule.

    Parameters
    ----------
    inner
        The aggregator that receives the clipped updates (FedAvg, Krum, ...).
    target_quantile
        ``gamma`` in (0, 1): the share of updates meant to pass unclipped (paper: 0.5).
    learning_rate
        ``eta`` > 0, the geometric step of ``C`` (paper: 0.2).
    initial_norm
        ``C_0`` > 0 (paper: 0.1).

    Metrics: ``inner``'s, plus ``clip_norm`` (``C`` used this round), ``clip_unclipped_fraction``
    (``b``) and ``clip_next_norm``.
    """

    def __init__(
        self,
        inner: Aggregator,
        *,
        target_quantile: float = 0.5,
        learning_rate: float = 0.2,
        initial_norm: float = 0.1,
    ) -> None:
        problems = _problems(inner, target_quantile, learning_rate, initial_norm)
        if problems:
            raise ConfigError("adaptive clipping: " + "; ".join(problems))
        self.inner = inner
        self.target_quantile, self.learning_rate = float(target_quantile), float(learning_rate)
        self.initial_norm = self.norm = float(initial_norm)

    @property
    def f(self) -> int:
        """The arbitrary updates ``inner`` tolerates (0 for a plain mean)."""
        return int(getattr(self.inner, "f", 0) or 0)

    def min_updates(self) -> int:
        """``inner``'s minimum (1 for a non-robust inner aggregator)."""
        return self.inner.min_updates() if isinstance(self.inner, RobustAggregator) else 1

    def state_arrays(self) -> Arrays:
        """``C`` (one scalar array) followed by ``inner``'s state."""
        return (np.array([self.norm]), *aggregator_state(self.inner))

    def load_state_arrays(self, state: Arrays) -> None:
        """Restore ``state_arrays``'s output; empty: ``C_0`` and a fresh ``inner``."""
        if state and np.shape(state[0]) != (1,):
            raise AggregationError(
                f"adaptive clipping: the checkpoint's first array has shape {np.shape(state[0])}, expected "
                "(1,) (the clipping norm); resume with the job's own aggregator"
            )
        self.norm = float(state[0][0]) if state else self.initial_norm
        load_aggregator_state(self.inner, tuple(state[1:]))

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        c = self.norm
        norms = [math.sqrt(sum(float(np.vdot(a, a)) for a in u.delta)) for u in updates]
        clipped = [
            replace(u, delta=tuple(a * (c / norm) for a in u.delta)) if norm > c else u
            for u, norm in zip(updates, norms, strict=True)
        ]
        result = self.inner.aggregate(clipped, server_round=server_round)
        b = sum(norm <= c for norm in norms) / len(updates)
        self.norm = c * math.exp(-self.learning_rate * (b - self.target_quantile))
        metrics = {"clip_norm": c, "clip_unclipped_fraction": b, "clip_next_norm": self.norm}
        return replace(result, metrics={**result.metrics, **metrics})


def _problems(inner: object, gamma: float, eta: float, c0: float) -> list[str]:
    out = []
    if not isinstance(inner, Aggregator):
        out.append(f"inner must be an aggregator (with aggregate()), got {type(inner).__name__}")
    if not 0 < gamma < 1:
        out.append(f"target_quantile must be in (0, 1), got {gamma!r}")
    if not (math.isfinite(eta) and eta > 0):
        out.append(f"learning_rate must be finite and > 0, got {eta!r}")
    if not (math.isfinite(c0) and c0 > 0):
        out.append(f"initial_norm must be finite and > 0, got {c0!r}")
    return out

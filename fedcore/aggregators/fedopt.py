"""Server optimizers FedAdagrad, FedAdam and FedYogi (Reddi et al. 2021, Alg. 2).

The mean delta is treated as a pseudo-gradient; the optimizer state (m, v) lives in the object,
so it must be the same object across rounds (the coordinator, or every site under HE).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from fedcore.aggregators._math import adaptive_step, weighted_mean
from fedcore.aggregators.base import AggregateResult, Arrays, ClientUpdate

__all__ = ["FedAdagrad", "FedAdam", "FedOpt", "FedYogi"]

Kind = Literal["adagrad", "adam", "yogi"]


class FedOpt:
    """Adaptive server optimizer over the weighted mean delta; ``kind`` selects the v update."""

    def __init__(
        self,
        *,
        kind: Kind,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        problems = [
            f"{name} must be {rule}, got {value}"
            for name, value, rule, ok in [
                ("server_lr", server_lr, "> 0", server_lr > 0),
                ("beta1", beta1, "in [0, 1)", 0 <= beta1 < 1),
                ("beta2", beta2, "in [0, 1)", 0 <= beta2 < 1),
                ("tau", tau, "> 0", tau > 0),
            ]
            if not ok
        ]
        if kind not in ("adagrad", "adam", "yogi"):
            problems.append(f"kind must be one of 'adagrad', 'adam', 'yogi', got {kind!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.kind: Kind = kind
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau
        self._m: Arrays | None = None
        self._v: Arrays | None = None

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        return self.apply_mean(weighted_mean(updates), server_round=server_round)

    def state_arrays(self) -> Arrays:
        """The optimizer state (m then v), so a site can persist it between HE rounds."""
        return () if self._m is None or self._v is None else (*self._m, *self._v)

    def load_state_arrays(self, state: Arrays) -> None:
        """Restore what ``state_arrays`` returned (empty: a fresh optimizer)."""
        if not state:
            self._m = self._v = None
            return
        half = len(state) // 2
        self._m, self._v = tuple(state[:half]), tuple(state[half:])

    def apply_mean(self, mean_delta: Arrays, *, server_round: int) -> AggregateResult:
        if self._m is None or self._v is None:
            self._m = tuple(np.zeros_like(d) for d in mean_delta)
            self._v = tuple(np.zeros_like(d) for d in mean_delta)
        step, self._m, self._v = adaptive_step(
            mean_delta,
            self._m,
            self._v,
            kind=self.kind,
            lr=self.server_lr,
            beta1=self.beta1,
            beta2=self.beta2,
            tau=self.tau,
        )
        return AggregateResult(step=step)


def FedAdam(*, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> FedOpt:
    """FedAdam: ``v = beta2 v + (1 - beta2) d^2``."""
    return FedOpt(kind="adam", server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)


def FedYogi(*, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> FedOpt:
    """FedYogi: ``v = v - (1 - beta2) d^2 sign(v - d^2)``."""
    return FedOpt(kind="yogi", server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)


def FedAdagrad(
    *, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
) -> FedOpt:
    """FedAdagrad: ``v = v + d^2``."""
    return FedOpt(kind="adagrad", server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)

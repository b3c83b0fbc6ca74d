"""FedDyn (Acar, Zhao, Matas, Mattina, Whatmough, Saligrama 2021, "Federated Learning Based on
Dynamic Regularization", ICLR, Alg. 1).

Site ``k`` keeps ``g_k`` (its state, zero at first: the gradient of its loss at its last local
model) and minimises, from the global model ``theta``,

    L_k(t) - <g_k, t> + (alpha / 2) ||t - theta||^2

(local steps of the task's loss plus the gradient ``-g_k + alpha (t - theta)`` of the other two
terms), then sets ``g_k <- g_k - alpha (theta_k - theta)``. The server keeps ``h`` (zero at first):

    h <- h - (alpha / m) sum_{k in P} (theta_k - theta),     theta+ = mean_k theta_k - h / alpha

with ``m`` the job's sites; the mean is the job's aggregator (``fedavg`` with equal counts is the
paper's). No extras travel. Privacy: the correction depends on the site's state and the current
weights only (under DP-SGD added after the noise), and the state follows the update the site sent,
so FedDyn composes with DP at no extra epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch

from fedcore.aggregators.base import AggregateResult, Aggregator, Arrays, ClientUpdate
from fedcore.algorithms.base import (
    Extras,
    GradCorrection,
    State,
    TrainContext,
    pack_state,
    unpack_state,
    zeros_like_model,
)
from fedcore.config.train import TrainConfig
from fedcore.errors import ConfigError

__all__ = ["FedDyn", "FedDynServer"]


def _sum(updates: Sequence[ClientUpdate]) -> Arrays:
    ordered = sorted(updates, key=lambda u: (u.site, u.num_examples))
    return tuple(np.sum([u.delta[i] for u in ordered], axis=0) for i in range(len(ordered[0].delta)))


@dataclass(frozen=True)
class FedDyn:
    """FedDyn's client with regularisation strength ``alpha`` (> 0; the paper uses 0.01 to 0.1)."""

    alpha: float = 0.01
    name: ClassVar[str] = "feddyn"
    extras: ClassVar[Extras] = Extras()

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not (
            isinstance(self.alpha, int | float) and math.isfinite(self.alpha)
        ):
            raise ConfigError(f"feddyn: alpha must be a finite number > 0, got {self.alpha!r}")
        if self.alpha <= 0:
            raise ConfigError(f"feddyn: alpha must be > 0, got {self.alpha!r}")

    def problems(self, train: TrainConfig) -> list[str]:
        if train.proximal_mu > 0:
            return [
                f"algorithm 'feddyn' has its own quadratic term (alpha); set [train] proximal_mu = 0, got "
                f"{train.proximal_mu:g}"
            ]
        return []

    def local_steps(self, *, job_steps: int, num_examples: int, batch_size: int) -> int:
        return job_steps

    def begin(
        self, *, global_arrays: Arrays, received: State, state: State | None, context: TrainContext
    ) -> GradCorrection | None:
        g_k = state["gradient"] if state else zeros_like_model([a.shape for a in global_arrays])
        minus_g = [torch.from_numpy(np.asarray(-a, dtype=np.float32)) for a in g_k]
        theta = [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in global_arrays]
        alpha = self.alpha

        def correction(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
            for p, g, m, t in zip(params, grads, minus_g, theta, strict=True):
                g.add_(m.to(g.dtype)).add_(p.detach() - t.to(p.dtype), alpha=alpha)

        return correction

    def release(self, sent: Arrays, *, received: State, context: TrainContext) -> State:
        return {}

    def next_state(
        self, *, state: State | None, sent: Arrays, released: State, received: State, context: TrainContext
    ) -> State:
        old = state["gradient"] if state else zeros_like_model([a.shape for a in sent])
        return {"gradient": tuple(g - self.alpha * d for g, d in zip(old, sent, strict=True))}

    def server(self, inner: Aggregator, *, num_sites: int) -> Aggregator:
        return FedDynServer(inner, alpha=self.alpha, num_sites=num_sites)


class FedDynServer:
    """FedDyn's server around ``inner``; ``h`` is state, checkpointed before ``inner``'s.
    Metrics: ``inner``'s and ``feddyn_h_norm``."""

    def __init__(self, inner: Aggregator, *, alpha: float, num_sites: int) -> None:
        if num_sites < 1:
            raise ValueError(f"num_sites must be >= 1, got {num_sites}")
        self.inner, self.alpha, self.num_sites = inner, alpha, num_sites
        self.h: Arrays = ()

    def broadcast(self, shapes: Sequence[tuple[int, ...]]) -> State:
        return {}

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        result = self.inner.aggregate(updates, server_round=server_round)
        total = _sum(updates)
        old = self.h or tuple(np.zeros_like(t) for t in total)
        self.h = tuple(h - (self.alpha / self.num_sites) * t for h, t in zip(old, total, strict=True))
        step = tuple(s - h / self.alpha for s, h in zip(result.step, self.h, strict=True))
        norm = float(np.sqrt(sum(float(np.sum(h * h)) for h in self.h)))
        return replace(result, step=step, metrics={**result.metrics, "feddyn_h_norm": norm})

    def state_arrays(self) -> Arrays:
        return pack_state(self.h, self.inner)

    def load_state_arrays(self, state: Arrays) -> None:
        self.h = unpack_state(state, self.inner)

"""FedNova (Wang, Liu, Liang, Joshi, Poor 2020, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization", NeurIPS, Sec. 4, Eq. 6-7).

Sites run different numbers of local steps ``tau_i`` (``local_epochs`` epochs of their own data);
plain FedAvg then optimises a surrogate that weighs sites by their step counts. FedNova normalises:
site ``i`` sends its update ``d_i`` and ``||a_i||_1``, the sum of the coefficients its steps put on
the gradients (``tau_i`` for plain SGD; ``(1 - (1 - lr mu)^tau_i) / (lr mu)`` with a proximal term
``mu``), and the server steps with

    tau_eff sum_i p_i d_i / ||a_i||_1,      tau_eff = sum_i p_i ||a_i||_1,   p_i = n_i / sum_j n_j

by rescaling each ``d_i`` by ``tau_eff / ||a_i||_1`` before the job's aggregator (``fedavg``: the
paper's weighted mean). Privacy: ``tau_i`` is computed from the site's *public* training-set size
(under DP its DP-released size), so ``||a_i||_1`` is a post-processing of a release already charged,
and DP-SGD is planned for exactly ``tau_i`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from fedcore.aggregators.base import AggregateResult, Aggregator, Arrays, ClientUpdate
from fedcore.algorithms.base import (
    Extras,
    ExtraSpec,
    GradCorrection,
    State,
    TrainContext,
    pack_state,
    require_extra,
    unpack_state,
)
from fedcore.config.train import TrainConfig
from fedcore.errors import ConfigError

__all__ = ["FedNova", "FedNovaServer", "steps_norm"]


def steps_norm(steps: int, *, lr: float, proximal_mu: float) -> float:
    """``||a||_1`` of ``steps`` SGD steps: ``steps``, or with a proximal term
    ``sum_k (1 - lr mu)^k = (1 - (1 - lr mu)^steps) / (lr mu)`` (Wang et al. 2020, Sec. 4)."""
    alpha = lr * proximal_mu
    if alpha == 0:
        return float(steps)
    return (1 - (1 - alpha) ** steps) / alpha


@dataclass(frozen=True)
class FedNova:
    """FedNova's client: ``local_epochs`` epochs of its data per round (``None``: the job's
    ``local_steps``, the same for every site), reporting ``||a_i||_1`` as the extra ``steps``."""

    local_epochs: int | None = None
    name: ClassVar[str] = "fednova"
    extras: ClassVar[Extras] = Extras(up={"steps": ExtraSpec(shape=(1,), minimum=1.0)})

    def __post_init__(self) -> None:
        e = self.local_epochs
        if e is not None and (isinstance(e, bool) or not isinstance(e, int) or e < 1):
            raise ConfigError(f"fednova: local_epochs must be an integer >= 1, got {e!r}")

    def problems(self, train: TrainConfig) -> list[str]:
        out = []
        if train.optimizer != "sgd":
            out.append(
                f"algorithm 'fednova' needs [train] optimizer = 'sgd' (its normalisation counts SGD steps), "
                f"got {train.optimizer!r}"
            )
        if train.lr * train.proximal_mu >= 1:
            out.append(
                f"algorithm 'fednova' needs lr x proximal_mu < 1, got {train.lr * train.proximal_mu:g}"
            )
        return out

    def local_steps(self, *, job_steps: int, num_examples: int, batch_size: int) -> int:
        if self.local_epochs is None:
            return job_steps
        return self.local_epochs * max(1, math.ceil(num_examples / batch_size))

    def begin(
        self, *, global_arrays: Arrays, received: State, state: State | None, context: TrainContext
    ) -> GradCorrection | None:
        return None

    def release(self, sent: Arrays, *, received: State, context: TrainContext) -> State:
        t = context.train
        return {"steps": (np.array([steps_norm(context.local_steps, lr=t.lr, proximal_mu=t.proximal_mu)]),)}

    def next_state(
        self, *, state: State | None, sent: Arrays, released: State, received: State, context: TrainContext
    ) -> State:
        return {}

    def server(self, inner: Aggregator, *, num_sites: int) -> Aggregator:
        return FedNovaServer(inner)


class FedNovaServer:
    """Rescale each update by ``tau_eff / ||a_i||_1``, then ``inner``. Metrics: ``fednova_tau_eff``."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner

    def broadcast(self, shapes: Sequence[tuple[int, ...]]) -> State:
        return {}

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        norms = [float(require_extra(u, "steps")[0][0]) for u in updates]
        counts = np.array([u.num_examples for u in updates], dtype=np.float64)
        tau_eff = float(np.dot(counts / counts.sum(), norms))
        scaled = [
            replace(u, delta=tuple(d * (tau_eff / a) for d in u.delta))
            for u, a in zip(updates, norms, strict=True)
        ]
        result = self.inner.aggregate(scaled, server_round=server_round)
        return replace(result, metrics={**result.metrics, "fednova_tau_eff": tau_eff})

    def state_arrays(self) -> Arrays:
        return pack_state((), self.inner)

    def load_state_arrays(self, state: Arrays) -> None:
        unpack_state(state, self.inner)

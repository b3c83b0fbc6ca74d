"""SCAFFOLD (Karimireddy, Kale, Mohri, Reddi, Stich, Suresh 2020, "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning", ICML, Alg. 1 with option II).

Client ``i`` holds a control variate ``c_i`` (its state, zero at first); the server holds ``c`` and
sends it every round. Each of the ``K`` local steps is ``y <- y - lr (g_i(y) - c_i + c)``; then

    c_i+ = c_i - c + (x - y) / (K lr)          (option II)

and the site sends ``dy = y - x`` and ``dc_i = c_i+ - c_i = -c - dy / (K lr)``. The server steps with
the job's aggregator on the ``dy`` (the paper: their mean times ``lr_g``, i.e. ``fedavg`` with
``server_lr``) and sets ``c <- c + (1/N) sum_{i in S} dc_i`` over the ``N`` sites of the job.

Privacy: ``dc_i`` is computed from the update the site sends (after its privacy filters) and the
public ``c``, ``K`` and ``lr``, so it is a post-processing of a release the plan already charges;
the correction ``c - c_i`` is data independent within the round and, under DP-SGD, is added after
the noise. SCAFFOLD therefore composes with DP-SGD and client-level filters at no extra epsilon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

import numpy as np
import torch

from fedcore.aggregators.base import AggregateResult, Aggregator, Arrays, ClientUpdate
from fedcore.algorithms.base import (
    Extras,
    ExtraSpec,
    GradCorrection,
    State,
    TrainContext,
    pack_state,
    site_sum,
    unpack_state,
    zeros_like_model,
)
from fedcore.config.train import TrainConfig

__all__ = ["Scaffold", "ScaffoldServer"]


class Scaffold:
    """SCAFFOLD's client: control-variate correction of every step, option II update of ``c_i``."""

    name: ClassVar[str] = "scaffold"
    extras: ClassVar[Extras] = Extras(down={"control": ExtraSpec()}, up={"control_delta": ExtraSpec()})

    def problems(self, train: TrainConfig) -> list[str]:
        if train.optimizer != "sgd":
            return [
                f"algorithm 'scaffold' needs [train] optimizer = 'sgd' (option II's control variate assumes "
                f"plain SGD steps of size lr), got {train.optimizer!r}"
            ]
        return []

    def local_steps(self, *, job_steps: int, num_examples: int, batch_size: int) -> int:
        return job_steps

    def begin(
        self, *, global_arrays: Arrays, received: State, state: State | None, context: TrainContext
    ) -> GradCorrection | None:
        c = received["control"]
        c_i = state["control"] if state else zeros_like_model([a.shape for a in global_arrays])
        shift = [torch.from_numpy(np.asarray(a - b, dtype=np.float32)) for a, b in zip(c, c_i, strict=True)]

        def correction(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
            for g, s in zip(grads, shift, strict=True):
                g.add_(s.to(g.dtype))

        return correction

    def release(self, sent: Arrays, *, received: State, context: TrainContext) -> State:
        k_lr = context.local_steps * context.train.lr
        return {"control_delta": tuple(-c - d / k_lr for c, d in zip(received["control"], sent, strict=True))}

    def next_state(
        self, *, state: State | None, sent: Arrays, released: State, received: State, context: TrainContext
    ) -> State:
        old = state["control"] if state else zeros_like_model([a.shape for a in sent])
        return {"control": tuple(c + d for c, d in zip(old, released["control_delta"], strict=True))}

    def server(self, inner: Aggregator, *, num_sites: int) -> Aggregator:
        return ScaffoldServer(inner, num_sites=num_sites)


class ScaffoldServer:
    """SCAFFOLD's server: ``inner`` steps on the updates; ``c`` moves by the control deltas' sum / N.

    ``c`` (zero before round 1) is state, checkpointed before ``inner``'s. Metrics: ``inner``'s and
    ``scaffold_control_norm`` (``||c||`` after the round).
    """

    def __init__(self, inner: Aggregator, *, num_sites: int) -> None:
        if num_sites < 1:
            raise ValueError(f"num_sites must be >= 1, got {num_sites}")
        self.inner, self.num_sites = inner, num_sites
        self.control: Arrays = ()

    def broadcast(self, shapes: Sequence[tuple[int, ...]]) -> State:
        if not self.control:
            self.control = zeros_like_model(shapes)
        return {"control": self.control}

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        result = self.inner.aggregate(updates, server_round=server_round)
        total = site_sum(updates, "control_delta")
        old = self.control or tuple(np.zeros_like(t) for t in total)
        self.control = tuple(c + t / self.num_sites for c, t in zip(old, total, strict=True))
        norm = float(np.sqrt(sum(float(np.sum(c * c)) for c in self.control)))
        return replace(result, metrics={**result.metrics, "scaffold_control_norm": norm})

    def state_arrays(self) -> Arrays:
        return pack_state(self.control, self.inner)

    def load_state_arrays(self, state: Arrays) -> None:
        self.control = unpack_state(state, self.inner)

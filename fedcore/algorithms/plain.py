"""``plain``: local steps of the task's loss, nothing else (FedAvg's client; the default)."""

from __future__ import annotations

from typing import ClassVar

from fedcore.aggregators.base import Aggregator, Arrays
from fedcore.algorithms.base import Extras, GradCorrection, State, TrainContext
from fedcore.config.train import TrainConfig

__all__ = ["PlainAlgorithm"]


class PlainAlgorithm:
    """No extras, no state, no server part: every method is the identity of its step.

    A researcher's algorithm may start from this class and override only what it changes (the
    built-ins spell every method out, so each file reads on its own).
    """

    name: ClassVar[str] = "plain"
    extras: ClassVar[Extras] = Extras()

    def problems(self, train: TrainConfig) -> list[str]:
        return []

    def local_steps(self, *, job_steps: int, num_examples: int, batch_size: int) -> int:
        return job_steps

    def begin(
        self, *, global_arrays: Arrays, received: State, state: State | None, context: TrainContext
    ) -> GradCorrection | None:
        return None

    def release(self, sent: Arrays, *, received: State, context: TrainContext) -> State:
        return {}

    def next_state(
        self, *, state: State | None, sent: Arrays, released: State, received: State, context: TrainContext
    ) -> State:
        return {} if state is None else state

    def server(self, inner: Aggregator, *, num_sites: int) -> Aggregator:
        return inner

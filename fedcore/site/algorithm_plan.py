"""The job's client algorithm in a site's plan: the steps it runs, what it releases, what it refuses.

``plan_algorithm(request, public_size)`` is called by ``build_plan`` once the site knows the size it
may use in public quantities: the algorithm fixes the optimizer steps of each round from it (FedNova:
epochs of that size), and DP-SGD is calibrated for exactly those steps. Every extra the algorithm
sends is listed as a release of the plan: a post-processing of the model update it is computed
from (``ClientAlgorithm.release`` sees only the update sent and public values), so it is charged
with that update. A DP mechanism's trainer that cannot take the algorithm's gradient correction and
context is refused in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedcore.algorithms import ClientAlgorithm, make_algorithm, trainer_problems
from fedcore.config.job import JobRequest
from fedcore.privacy.mechanisms import MechanismPlan

__all__ = ["AlgorithmPlan", "plan_algorithm"]


@dataclass(frozen=True)
class AlgorithmPlan:
    """The job's algorithm at this site, and the optimizer steps of each of its rounds."""

    algorithm: ClientAlgorithm
    steps: int

    def problems(self, mechanisms: Sequence[MechanismPlan]) -> list[str]:
        """Why the plan's mechanisms cannot run the algorithm (empty: they can)."""
        return [p for m in mechanisms for p in trainer_problems(self.algorithm, m.trainer, mechanism=m.name)]

    def releases(self, rounds: int) -> list[tuple[str, int, str]]:
        """``(what, count, protection)`` of each extra sent to the coordinator, for ``Release``."""
        return [
            (
                f"algorithm extra {name!r} ({self.algorithm.name})",
                rounds,
                "computed from the model update this site sends and public values only: a post-processing "
                "of that update, covered by its protection and charge",
            )
            for name in sorted(self.algorithm.extras.up)
        ]


def plan_algorithm(request: JobRequest, public_size: int) -> AlgorithmPlan:
    """The job's algorithm and its steps per round for a site whose public training-set size is
    ``public_size`` (under DP its DP-released size: the steps then release nothing new)."""
    spec = request.spec
    algorithm = make_algorithm(spec.algorithm.name, spec.algorithm.options)
    steps = algorithm.local_steps(
        job_steps=spec.local_steps, num_examples=public_size, batch_size=spec.train.batch_size
    )
    return AlgorithmPlan(algorithm, steps)

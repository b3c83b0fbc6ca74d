"""Client algorithms: a site's local objective and state, extras both ways, the server's part.

``[algorithm] name = "scaffold"`` in a job selects one; the default ``plain`` is local steps of the
task's loss (FedAvg's client). Built in: ``scaffold`` (Karimireddy et al. 2020), ``fednova`` (Wang
et al. 2020), ``feddyn`` (Acar et al. 2021). The protocol and how each step composes with the
site's plan: ``fedcore.algorithms.base`` and README.md.
"""

from fedcore.algorithms.base import (
    ClientAlgorithm,
    Extras,
    ExtraSpec,
    GradCorrection,
    ServerAlgorithm,
    State,
    TrainContext,
    check_extras,
)
from fedcore.algorithms.feddyn import FedDyn, FedDynServer
from fedcore.algorithms.fednova import FedNova, FedNovaServer
from fedcore.algorithms.plain import PlainAlgorithm
from fedcore.algorithms.registry import (
    DEFAULT_ALGORITHM,
    algorithm_factory,
    algorithm_names,
    algorithm_problems,
    make_algorithm,
    register_algorithm,
    trainer_problems,
)
from fedcore.algorithms.scaffold import Scaffold, ScaffoldServer

register_algorithm("plain", PlainAlgorithm)
register_algorithm("scaffold", Scaffold)
register_algorithm("fednova", FedNova)
register_algorithm("feddyn", FedDyn)

__all__ = [
    "DEFAULT_ALGORITHM",
    "ClientAlgorithm",
    "ExtraSpec",
    "Extras",
    "FedDyn",
    "FedDynServer",
    "FedNova",
    "FedNovaServer",
    "GradCorrection",
    "PlainAlgorithm",
    "Scaffold",
    "ScaffoldServer",
    "ServerAlgorithm",
    "State",
    "TrainContext",
    "algorithm_factory",
    "algorithm_names",
    "algorithm_problems",
    "check_extras",
    "make_algorithm",
    "register_algorithm",
    "trainer_problems",
]

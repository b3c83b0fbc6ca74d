"""Client algorithms by name (``[algorithm] name = ...``), and what a job needs of its algorithm.

An explicit registry, like the aggregators' (``register_algorithm(name, factory)``); a researcher's
algorithm registers itself in a module the app lists under ``[tool.fedcore] plugins``, so the
coordinator and every site know it. Nothing named by data from the network is imported.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fedcore.aggregators.fedavg import FedAvg
from fedcore.algorithms.base import ClientAlgorithm
from fedcore.config.train import TrainConfig
from fedcore.errors import UnknownNameError
from fedcore.plugins import Registry

__all__ = [
    "DEFAULT_ALGORITHM",
    "algorithm_factory",
    "algorithm_names",
    "algorithm_problems",
    "make_algorithm",
    "register_algorithm",
    "trainer_problems",
]

DEFAULT_ALGORITHM = "plain"
_REGISTRY: Registry[Callable[..., ClientAlgorithm]] = Registry(
    "algorithm",
    fix="Fix the job's [algorithm] name, or register yours with "
    "fedcore.algorithms.register_algorithm(name, cls)",
)


def register_algorithm(
    name: str, factory: Callable[..., ClientAlgorithm], *, force: bool = False
) -> Callable[..., ClientAlgorithm]:
    """Register ``factory`` (usually a class) under ``name``; ``ValueError`` if the name is taken by
    another factory, unless ``force=True``. Returns ``factory``."""
    return _REGISTRY.register(name, factory, force=force)


def algorithm_names() -> list[str]:
    """The registered algorithms' names, sorted."""
    return _REGISTRY.names()


def algorithm_factory(name: str) -> Callable[..., ClientAlgorithm]:
    """The factory registered as ``name`` (``UnknownNameError`` listing the known names if none)."""
    return _REGISTRY.get(name)


def make_algorithm(name: str, options: Mapping[str, Any] | None = None) -> ClientAlgorithm:
    """Build the algorithm registered as ``name`` with the job's keyword ``options``."""
    factory = algorithm_factory(name)
    try:
        return factory(**dict(options or {}))
    except TypeError as err:
        raise UnknownNameError(
            f"algorithm {name!r} does not accept options {sorted(options or {})}: {err}"
        ) from err


def _has_server(algorithm: ClientAlgorithm) -> bool:
    probe = FedAvg()
    return algorithm.server(probe, num_sites=1) is not probe


def algorithm_problems(
    algorithm: ClientAlgorithm, *, train: TrainConfig, he: bool, secagg: bool = False
) -> list[str]:
    """Why a job cannot run ``algorithm`` with these settings, one line each (empty: it can).

    Under HE or secure aggregation the coordinator sees only the sum of the updates: neither carries
    an algorithm's extras (one sent in the clear beside the sum would bypass it) nor runs a server
    part on single updates (under HE the sites apply the step themselves).
    """
    out = list(algorithm.problems(train))
    if (he or secagg) and (algorithm.extras or _has_server(algorithm)):
        what = [f"server-to-site extras {sorted(algorithm.extras.down)}"] if algorithm.extras.down else []
        what += [f"site-to-server extras {sorted(algorithm.extras.up)}"] if algorithm.extras.up else []
        what += ["a server step beside the aggregator's"] if _has_server(algorithm) else []
        mode, section = ("HE", "[privacy.he]") if he else ("secure aggregation", "[privacy.secagg]")
        out.append(
            f"algorithm {algorithm.name!r} cannot run under {mode}: the coordinator sees only the sum of "
            f"the updates, and {mode} carries none of these: {', '.join(what)}; turn {section} off or use "
            "algorithm 'plain'"
        )
    return out


def trainer_problems(
    algorithm: ClientAlgorithm, trainer: Callable[..., Any] | None, *, mechanism: str
) -> list[str]:
    """A privacy mechanism's trainer runs a non-plain algorithm only if it takes its gradient
    correction and the round's context (keywords ``correction`` and ``context``)."""
    if trainer is None or algorithm.name == DEFAULT_ALGORITHM:
        return []
    params = inspect.signature(trainer).parameters
    if "correction" in params and "context" in params:
        return []
    return [
        f"mechanism {mechanism!r} trains locally with a trainer that takes no gradient correction and "
        f"context (keywords correction=, context=), so it cannot run algorithm {algorithm.name!r}; use "
        "algorithm 'plain' or a trainer that takes them"
    ]

"""The attack protocols (simulation only) and their name registry.

An update attack turns a Byzantine site's honestly trained update into the one it sends. In
simulation the attacker is omniscient: it sees the honest updates of the round (``honest``), as
ALIE and IPM assume. A data attack changes a site's training labels before local training. Both
take their randomness as an argument. Pure numpy, no Flower: ``fedcore node`` never imports this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from fedcore.aggregators.base import ClientUpdate
from fedcore.errors import UnknownNameError
from fedcore.plugins import Registry

__all__ = [
    "Attack",
    "DataAttack",
    "attack_factory",
    "attack_names",
    "make_attack",
    "register_attack",
]


@runtime_checkable
class Attack(Protocol):
    """A Byzantine update: ``corrupt`` returns what the attacking site sends instead of ``update``.

    ``honest`` holds the round's honest updates (an omniscient attacker's view; attacks that do not
    need it ignore it). The result keeps ``update``'s site and example count unless the attack is
    about them.
    """

    def corrupt(
        self, update: ClientUpdate, *, honest: Sequence[ClientUpdate], rng: np.random.Generator
    ) -> ClientUpdate: ...


@runtime_checkable
class DataAttack(Protocol):
    """A data-poisoning attack: the labels a Byzantine site trains on instead of ``y``."""

    def corrupt_labels(self, y: NDArray[Any], *, rng: np.random.Generator) -> NDArray[Any]: ...


AttackFactory = Callable[..., Attack | DataAttack]
_REGISTRY: Registry[AttackFactory] = Registry(
    "attack",
    fix="Fix the job's [attack] name, or register yours with fedcore.attacks.register_attack(name, cls)",
)


def register_attack(name: str, factory: AttackFactory, *, force: bool = False) -> AttackFactory:
    """Register ``factory`` under ``name``; ``ValueError`` if taken (unless ``force=True``)."""
    return _REGISTRY.register(name, factory, force=force)


def attack_names() -> list[str]:
    """The registered attack names, sorted."""
    return _REGISTRY.names()


def attack_factory(name: str) -> AttackFactory:
    """The factory registered as ``name`` (``UnknownNameError`` listing the known names if none)."""
    return _REGISTRY.get(name)


def make_attack(name: str, **options: Any) -> Attack | DataAttack:
    """Build the attack registered as ``name`` with keyword ``options`` from a job file."""
    factory = attack_factory(name)
    try:
        return factory(**options)
    except TypeError as err:
        raise UnknownNameError(f"attack {name!r} does not accept options {sorted(options)}: {err}") from err

"""The aggregator protocol: frozen wire-free types and a name registry.

An aggregator turns the sites' updates of one round into the step the global model takes::

    global_{t+1} = global_t + AggregateResult.step

Updates are *deltas* (``local - global``), so an aggregator never needs the global weights and the
same object can run at the coordinator (plaintext) or at every site after an HE sum is decrypted.
Pure policy layer: numpy only, no Flower imports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from fedcore.errors import AggregationError, UnknownNameError
from fedcore.plugins import Registry

__all__ = [
    "AggregateResult",
    "Aggregator",
    "Arrays",
    "ClientUpdate",
    "MeanAggregator",
    "RobustAggregator",
    "StatefulAggregator",
    "aggregator_factory",
    "aggregator_names",
    "aggregator_state",
    "load_aggregator_state",
    "make_aggregator",
    "register_aggregator",
]

Arrays = tuple[NDArray[np.float64], ...]


def _frozen_arrays(arrays: Sequence[Any]) -> Arrays:
    out = []
    for a in arrays:
        arr = np.array(a, dtype=np.float64, copy=True)
        arr.flags.writeable = False
        out.append(arr)
    return tuple(out)


@dataclass(frozen=True)
class ClientUpdate:
    """One site's contribution to a round.

    Parameters
    ----------
    delta
        ``local - global`` for every parameter tensor, in model order (copied, read-only).
    num_examples
        The weight of this update (training examples used); must be > 0.
    site
        The site's name, for reports and error messages.
    metrics
        Scalar training metrics (loss, accuracy ...), passed through to reports.
    extras
        What the job's client algorithm sent beside the delta, by name (SCAFFOLD's control-variate
        delta, FedNova's step count; ``fedcore.algorithms``), copied and read-only; empty for most.
    """

    delta: Arrays
    num_examples: int
    site: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    extras: Mapping[str, Arrays] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "delta", _frozen_arrays(self.delta))
        object.__setattr__(self, "metrics", dict(self.metrics))
        object.__setattr__(self, "extras", {k: _frozen_arrays(v) for k, v in self.extras.items()})
        if self.num_examples <= 0:
            raise AggregationError(
                f"num_examples must be > 0, got {self.num_examples} from site {self.site!r}; "
                "a site with no training rows must not send an update"
            )


@dataclass(frozen=True)
class AggregateResult:
    """What one round of aggregation produced.

    ``step`` is added to the global model. ``metrics`` are scalars for the report. ``dp_events``
    holds ``dp_accounting.DpEvent`` objects describing any privacy mechanism applied this round
    (empty when none), so the ledger can charge them.
    """

    step: Arrays
    metrics: Mapping[str, float] = field(default_factory=dict)
    dp_events: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "step", _frozen_arrays(self.step))
        object.__setattr__(self, "metrics", dict(self.metrics))
        object.__setattr__(self, "dp_events", tuple(self.dp_events))


@runtime_checkable
class Aggregator(Protocol):
    """Anything with this method is an aggregator."""

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult: ...


@runtime_checkable
class MeanAggregator(Aggregator, Protocol):
    """An aggregator whose step depends on the updates only through their weighted mean.

    Such an aggregator works under homomorphic encryption: the sites decrypt the encrypted sum,
    divide by the total weight and call ``apply_mean`` themselves (deterministically, so every site
    computes the same step).
    """

    def apply_mean(self, mean_delta: Arrays, *, server_round: int) -> AggregateResult: ...


@runtime_checkable
class StatefulAggregator(Aggregator, Protocol):
    """An aggregator that keeps state across rounds (a server optimizer's moments).

    The coordinator checkpoints ``state_arrays()`` after every round and a resumed job restores it
    with ``load_state_arrays`` (empty: a fresh state), so a resumed run takes the same steps as an
    uninterrupted one. An aggregator without these methods is taken to be stateless.
    """

    def state_arrays(self) -> Arrays: ...

    def load_state_arrays(self, state: Arrays) -> None: ...


@runtime_checkable
class RobustAggregator(Aggregator, Protocol):
    """A Byzantine-robust aggregator: it withstands ``f`` arbitrary updates among at least
    ``min_updates()`` per round, and refuses (``AggregationError``) a round with fewer.

    The coordinator calls ``min_updates()`` before round 1 to refuse a job whose federation is too
    small for the rule's ``f``, instead of failing (or silently losing the guarantee) mid-run.
    """

    def min_updates(self) -> int: ...


def aggregator_state(aggregator: Aggregator | None) -> Arrays:
    """``aggregator``'s state to checkpoint (empty for a stateless one, or none under HE)."""
    return aggregator.state_arrays() if isinstance(aggregator, StatefulAggregator) else ()


def load_aggregator_state(aggregator: Aggregator | None, state: Arrays) -> None:
    """Restore a checkpointed state; ``AggregationError`` if a state cannot be restored."""
    if isinstance(aggregator, StatefulAggregator):
        aggregator.load_state_arrays(state)
    elif state:
        raise AggregationError(
            f"the checkpoint holds {len(state)} optimizer arrays but aggregator "
            f"{type(aggregator).__name__} has no load_state_arrays; resume with the job's own aggregator"
        )


_REGISTRY: Registry[Callable[..., Aggregator]] = Registry(
    "aggregator",
    fix="Fix the job file's [aggregator] name, or register yours with fedcore.register_aggregator(name, cls)",
)


def register_aggregator(
    name: str, factory: Callable[..., Aggregator], *, force: bool = False
) -> Callable[..., Aggregator]:
    """Register ``factory`` (usually a class) under ``name`` so job files can select it.

    Raises ``ValueError`` if ``name`` is taken, unless ``force=True``. Returns ``factory`` so it
    can be used as a decorator helper.
    """
    return _REGISTRY.register(name, factory, force=force)


def aggregator_names() -> list[str]:
    """The registered aggregator names, sorted."""
    return _REGISTRY.names()


def aggregator_factory(name: str) -> Callable[..., Aggregator]:
    """The factory registered as ``name`` (``UnknownNameError`` listing the known names if none)."""
    return _REGISTRY.get(name)


def make_aggregator(name: str, **options: Any) -> Aggregator:
    """Build the aggregator registered as ``name`` with keyword ``options`` from a job file."""
    factory = aggregator_factory(name)
    try:
        return factory(**options)
    except TypeError as err:
        raise UnknownNameError(
            f"aggregator {name!r} does not accept options {sorted(options)}: {err}"
        ) from err

"""Privacy mechanisms as plug-ins: parse a table, tighten by the site's policy, plan the job's cost.

A mechanism is named by its job table ``[privacy.<name>]``; the same table in a site file is the
site's own minimum. For every job, at every site:

1. ``parse`` turns a table into frozen, validated settings (the coordinator's job file at load, the
   site file at load, and the coordinator's request again at the site);
2. ``tighten(job, site, max_epsilon=...)`` keeps the stricter of the two: values from the
   coordinator may only tighten the site's (and a site refuses what it cannot enforce);
3. ``plan(settings, ctx)`` calibrates and returns a ``MechanismPlan``: the ``dp_accounting`` events
   of the whole job, one line on what is released, and how the mechanism acts on the site's work
   (a local trainer that replaces plain training, a filter on the update).

A job's epsilon is its total. A mechanism whose noise is set by a target epsilon (``dpsgd``) also
implements ``target_epsilon(settings)`` (``TargetedMechanism``): the site plans it last, with every
other release of the plan in ``ctx.others`` (the other mechanisms' events, DP evaluations, a noisy
training-set size this plan pays for), and it calibrates so that its events composed with those
spend at most the target at ``ctx.delta`` with ``ctx.accountant`` (the ledger's). A mechanism with a
fixed noise (``client_dp``, an app's ``local_dp``) ignores ``ctx.others``: its cost is what it is,
and the plan states the total.

A new mechanism is one file: a class with ``name``, ``parse``, ``tighten`` and ``plan``, registered
with ``register_mechanism(MyMechanism())`` in a module the app imports (it must be registered on the
coordinator and at every site: Flower imports the app's module on both sides). Built in: ``dpsgd``
(sample-level DP-SGD) and ``client_dp`` (client-level DP, noise shares added by the sites, under HE).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from dp_accounting.dp_event import DpEvent
from numpy.typing import NDArray
from torch import nn

from fedcore.config.reader import Reader, suggest
from fedcore.config.train import TrainConfig
from fedcore.errors import UnknownNameError
from fedcore.privacy.accounting import AccountantName
from fedcore.privacy.rng import Source

__all__ = [
    "UNIT_ORDER",
    "LocalTrainer",
    "Mechanism",
    "MechanismPlan",
    "PlanContext",
    "PrivacyUnit",
    "TargetedMechanism",
    "UpdateFilter",
    "builtin_mechanism_names",
    "get_mechanism",
    "mechanism_names",
    "register_mechanism",
    "target_epsilon",
]

PrivacyUnit = Literal["example", "customer", "site"]
"""What one epsilon protects: one row, one customer (all its rows; ``[privacy] unit_column``), or
the site's whole contribution (client-level DP). A guarantee for a unit holds for every smaller one."""
UNIT_ORDER: tuple[PrivacyUnit, ...] = ("example", "customer", "site")

Arrays = tuple[NDArray[np.float64], ...]
F32 = NDArray[np.float32]
LocalTrainer = Callable[[nn.Module, F32, F32, TrainConfig, int, Source], dict[str, float]]
"""``trainer(model, x, y, cfg, steps, source) -> public metrics``: trains ``model`` in place."""
UpdateFilter = Callable[[Arrays, Source], Arrays]
"""``update_filter(delta, source) -> protected delta``."""


@dataclass(frozen=True)
class PlanContext:
    """What a site plans a job with: the job's request and the site's own public numbers.

    ``num_examples`` is the training-set size the site may use in public quantities (its true size
    when its policy declares sizes public, else its DP-released size); under customer-level DP it
    counts customers, not rows. ``units`` is private: each training row's customer code (``0..U-1``,
    from the column the site's ``[privacy] unit_column`` names; ``None`` without one), for a trainer
    to group rows by; it is never released.

    ``others``: the events of every other release of the plan, for a mechanism that calibrates to
    the job's total (``TargetedMechanism``; empty for the others, which are planned first).
    ``delta`` (the budget's; ``None``: the mechanism's own) and ``accountant`` (the ledger's) are
    where that total is measured.
    """

    num_examples: int
    batch_size: int
    rounds: int
    local_steps: int
    num_sites: int
    he: bool
    units: NDArray[np.int64] | None = None
    others: tuple[DpEvent, ...] = ()
    delta: float | None = None
    accountant: AccountantName = "pld"


@dataclass(frozen=True)
class MechanismPlan:
    """One mechanism's part of a site's plan for one job."""

    name: str
    events: tuple[DpEvent, ...]
    release: str
    public: Mapping[str, float] = field(default_factory=dict)
    trainer: LocalTrainer | None = None
    update_filter: UpdateFilter | None = None
    uniform_weight: bool = False
    unit: PrivacyUnit = "example"
    round_events: tuple[DpEvent, ...] | None = None
    """One round's share of ``events`` (``events`` = this, composed ``rounds`` times): the site then
    charges each round it answers when it answers it. ``None``: ``events`` are charged whole at the
    site's first answer of the job (an upper bound when the site is sampled in fewer rounds)."""


@runtime_checkable
class Mechanism(Protocol):
    """What a privacy mechanism implements (settings types are the mechanism's own)."""

    name: str

    def parse(self, table: Reader) -> Any:
        """Typed settings from the table; record problems on the reader, call ``table.done()``."""
        ...

    def tighten(self, job: Any, site: Any, *, max_epsilon: float | None) -> Any:
        """The stricter of the job's request and the site's minimum (either may be ``None``)."""
        ...

    def plan(self, settings: Any, ctx: PlanContext) -> MechanismPlan:
        """Calibrate for the job; raise ``PolicyError`` for what the site cannot enforce."""
        ...


@runtime_checkable
class TargetedMechanism(Mechanism, Protocol):
    """A mechanism whose noise is calibrated to a target epsilon: the whole job's, every release
    of the plan composed (``ctx.others``); see the module docstring."""

    def target_epsilon(self, settings: Any) -> float | None:
        """The total epsilon ``settings`` name (``None``: this job's settings fix the noise)."""
        ...


def target_epsilon(mechanism: Mechanism, settings: Any) -> float | None:
    """The job total ``mechanism`` calibrates to with ``settings`` (``None`` for a fixed noise)."""
    return mechanism.target_epsilon(settings) if isinstance(mechanism, TargetedMechanism) else None


_REGISTRY: dict[str, Mechanism] = {}
_BUILTINS = ("fedcore.privacy.mechanisms.dpsgd", "fedcore.privacy.mechanisms.client_dp")


def _registry() -> Mapping[str, Mechanism]:
    if not all(m.rsplit(".", 1)[1] in _REGISTRY for m in _BUILTINS):
        import importlib

        for module in _BUILTINS:
            importlib.import_module(module)
    return _REGISTRY


def register_mechanism(mechanism: Mechanism, *, force: bool = False) -> Mechanism:
    """Register ``mechanism`` under ``mechanism.name`` (its ``[privacy.<name>]`` table).

    Raises ``ValueError`` if the name is taken by another mechanism, unless ``force=True``.
    """
    if not isinstance(mechanism, Mechanism):
        raise TypeError(f"{mechanism!r} lacks name/parse/tighten/plan; see fedcore.privacy.mechanisms")
    name = mechanism.name
    if not name.isidentifier() or name == "he":
        raise ValueError(f"mechanism name must be an identifier other than 'he', got {name!r}")
    old = _REGISTRY.get(name)
    if old is not None and not force and type(old) is not type(mechanism):
        raise ValueError(f"mechanism {name!r} is already registered ({old!r}); pass force=True to replace it")
    _REGISTRY[name] = mechanism
    return mechanism


def mechanism_names() -> list[str]:
    """The registered mechanisms' names, sorted."""
    return sorted(_registry())


def builtin_mechanism_names() -> list[str]:
    """The mechanisms fedcore itself provides (apps may register more)."""
    return sorted(m.rsplit(".", 1)[1] for m in _BUILTINS)


def get_mechanism(name: str) -> Mechanism:
    """The mechanism registered as ``name``; ``UnknownNameError`` with a suggestion otherwise."""
    found = _registry().get(name)
    if found is None:
        raise UnknownNameError(f"unknown privacy mechanism {name!r}{suggest(name, mechanism_names())}")
    return found

"""The client-algorithm protocol: a round's local work beyond plain steps, and the server's part.

A client algorithm (SCAFFOLD, FedNova, FedDyn, a researcher's own) is one object a job selects
with ``[algorithm] name = ...``. At a site, for every round it trains:

1. ``local_steps``: how many optimizer steps the site runs (FedNova: epochs of its public size);
   the site plans DP-SGD for exactly these steps;
2. ``begin``: from the global model, the extras the server sent (``received``), this site's own
   state from its last round (``state``: kept in the site's state folder, across restarts and
   ``fedcore resume``) and the round's ``TrainContext``, a ``GradCorrection``: the gradient of a
   data-independent term of the local objective (SCAFFOLD's ``c - c_i``, FedDyn's linear and
   quadratic terms), added to the data gradient before every step (under DP-SGD after the noise:
   post-processing, so DP-SGD's accounting covers it);
3. ``release``: the extras the site sends beside its update, computed from **what it sends**
   (the update after its privacy filters) and public values only: a post-processing of a release
   the plan already charges, never of its rows or its state. This is what lets every extra compose
   with DP (SCAFFOLD's control-variate delta is ``-c - update / (K lr)``; FedNova's step count is a
   function of the public size);
4. ``next_state``: the site's new state (private: never sent).

At the coordinator, ``server(inner, num_sites=N)`` wraps the job's aggregator into a
``ServerAlgorithm``: an aggregator that reads the updates' ``extras``, keeps its own state
(checkpointed with the job), and ``broadcast``s the extras of the next round.

Extras travel as float32 arrays named in ``extras`` (``Extras.down``: server to site, ``.up``: site
to server), each ``"model"``-shaped (one array per model tensor) or of one fixed shape; both ends
check every extra against that declaration (a coordinator's extras are requests too). Under HE or
secure aggregation the coordinator sees only the sum of the updates: no extra travels, and an
algorithm with any extra or a server part is refused there (``fedcore.algorithms.algorithm_problems``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch

from fedcore.aggregators.base import (
    Aggregator,
    Arrays,
    ClientUpdate,
    aggregator_state,
    load_aggregator_state,
)
from fedcore.config.train import TrainConfig
from fedcore.errors import AggregationError, UpdateError

__all__ = [
    "ClientAlgorithm",
    "ExtraSpec",
    "Extras",
    "GradCorrection",
    "ServerAlgorithm",
    "State",
    "TrainContext",
    "check_extras",
    "extra_shapes",
    "pack_state",
    "require_extra",
    "site_sum",
    "unpack_state",
    "zeros_like_model",
]

State = Mapping[str, Arrays]
"""Named arrays: a site's state, or the extras one side sends the other."""

GradCorrection = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], None]
"""``correction(params, grads)``: add the gradient at ``params`` of the algorithm's data-independent
term of the local objective into ``grads``, in place (called before every optimizer step)."""


@dataclass(frozen=True)
class ExtraSpec:
    """One extra array set: ``"model"`` (the model's tensor shapes) or one array of ``shape``; every
    value ``>= minimum`` when given (FedNova's step count is at least 1)."""

    shape: Literal["model"] | tuple[int, ...] = "model"
    minimum: float | None = None


@dataclass(frozen=True)
class Extras:
    """What an algorithm sends besides the model: ``down`` (server to site), ``up`` (site to server)."""

    down: Mapping[str, ExtraSpec] = field(default_factory=dict)
    up: Mapping[str, ExtraSpec] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.down or self.up)


@dataclass(frozen=True)
class TrainContext:
    """What a site's round of local work is, public and reproducible: who, which round of which job
    (``job_seed``: the job's seed), how many sites the job has, the optimizer steps to run, the
    training settings, and whether the site's plan has DP (a trainer's metrics are then withheld)."""

    site: str
    server_round: int
    job_seed: int
    job_id: str
    num_sites: int
    local_steps: int
    train: TrainConfig
    dp: bool = False


@runtime_checkable
class ClientAlgorithm(Protocol):
    """A job's client algorithm; see the module docstring for when each method runs."""

    @property
    def name(self) -> str:
        """Its registered name (for messages)."""
        ...

    @property
    def extras(self) -> Extras:
        """The extras it sends each way."""
        ...

    def problems(self, train: TrainConfig) -> list[str]:
        """Why the job's ``[train]`` settings do not suit the algorithm (empty: they do)."""
        ...

    def local_steps(self, *, job_steps: int, num_examples: int, batch_size: int) -> int:
        """Steps this site runs per round (``num_examples``: its public training-set size)."""
        ...

    def begin(
        self, *, global_arrays: Arrays, received: State, state: State | None, context: TrainContext
    ) -> GradCorrection | None:
        """The round's gradient correction (``None``: plain steps); ``state``: None in the first round."""
        ...

    def release(self, sent: Arrays, *, received: State, context: TrainContext) -> State:
        """The extras ``up``, from the update the site sends and public values only."""
        ...

    def next_state(
        self, *, state: State | None, sent: Arrays, released: State, received: State, context: TrainContext
    ) -> State:
        """The site's state after this round (kept at the site, never sent)."""
        ...

    def server(self, inner: Aggregator, *, num_sites: int) -> Aggregator:
        """The coordinator's part around the job's aggregator (``inner`` itself when there is none)."""
        ...


@runtime_checkable
class ServerAlgorithm(Aggregator, Protocol):
    """An algorithm's coordinator side: an aggregator that also sends the next round's extras."""

    def broadcast(self, shapes: Sequence[tuple[int, ...]]) -> State:
        """The extras ``down`` for the next round (``shapes``: the model's tensors)."""
        ...


def zeros_like_model(shapes: Sequence[tuple[int, ...]]) -> Arrays:
    """One float64 zero array per model tensor."""
    return tuple(np.zeros(s) for s in shapes)


def extra_shapes(spec: ExtraSpec, model: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The tensor shapes an extra of ``spec`` has for a model of ``model`` shapes."""
    return [tuple(s) for s in model] if spec.shape == "model" else [tuple(spec.shape)]


def check_extras(
    got: State, declared: Mapping[str, ExtraSpec], model: Sequence[tuple[int, ...]], *, who: str
) -> dict[str, Arrays]:
    """``got`` as float64 arrays when it holds exactly the ``declared`` extras, each of its shapes,
    finite and above its minimum; ``UpdateError`` naming ``who`` and the first problem otherwise."""
    if set(got) != set(declared):
        raise UpdateError(
            f"{who} sent extras {sorted(got)}, expected {sorted(declared)} (the job's algorithm's)"
        )
    out = {}
    for name, spec in declared.items():
        arrays = tuple(np.asarray(a, dtype=np.float64) for a in got[name])
        shapes = [a.shape for a in arrays]
        if shapes != extra_shapes(spec, model):
            raise UpdateError(
                f"{who} sent extra {name!r} of shapes {shapes}, expected {extra_shapes(spec, model)}"
            )
        if not all(np.all(np.isfinite(a)) for a in arrays):
            raise UpdateError(f"{who} sent extra {name!r} holding NaN or inf")
        low = spec.minimum
        if low is not None and not all(np.all(a >= low) for a in arrays):
            raise UpdateError(f"{who} sent extra {name!r} with a value below its minimum {low:g}")
        out[name] = arrays
    return out


def require_extra(update: ClientUpdate, name: str) -> Arrays:
    """``update.extras[name]``; ``AggregationError`` when the site sent none (a checked reply has it)."""
    if name not in update.extras:
        raise AggregationError(
            f"site {update.site!r} sent no extra {name!r}; the job's algorithm needs it from every site"
        )
    return update.extras[name]


def pack_state(own: Arrays, inner: Aggregator) -> Arrays:
    """A server part's checkpoint: how many arrays are its own, them, then ``inner``'s state."""
    return (np.array([float(len(own))]), *own, *aggregator_state(inner))


def unpack_state(state: Arrays, inner: Aggregator) -> Arrays:
    """Restore ``pack_state``'s output into ``inner``; returns the server part's own arrays (empty
    ``state``: a fresh start)."""
    if not state:
        load_aggregator_state(inner, ())
        return ()
    if np.shape(state[0]) != (1,) or not 0 <= int(state[0][0]) <= len(state) - 1:
        raise AggregationError(
            f"the checkpoint's algorithm state starts with an array of shape {np.shape(state[0])}, expected "
            "(1,) (its own array count); resume with the job's own algorithm"
        )
    own = int(state[0][0])
    load_aggregator_state(inner, tuple(state[1 + own :]))
    return tuple(np.array(a, dtype=np.float64) for a in state[1 : 1 + own])


def site_sum(updates: Sequence[ClientUpdate], name: str) -> Arrays:
    """The sum over ``updates`` of their extra ``name``, in site order (reply order does not matter)."""
    ordered = sorted(updates, key=lambda u: (u.site, u.num_examples))
    first = require_extra(ordered[0], name)
    total = [np.zeros_like(a) for a in first]
    for u in ordered:
        for acc, a in zip(total, require_extra(u, name), strict=True):
            acc += a
    return tuple(total)

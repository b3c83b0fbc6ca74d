"""One round of a site's local work: train as the plan and the job's algorithm say, protect, release.

``local_update`` is what ``SiteRuntime.local_update`` runs once a train answer is authorized:

1. the job's algorithm (``fedcore.algorithms``) begins the round from the global model, the
   extras the coordinator sent (checked before any charge: ``checked_extras``) and the site's own
   state from its last round (``fedcore.site.algorithm_state``), and may return a gradient
   correction;
2. the site trains for the steps its plan fixed (``SitePlan.local_steps``): with its DP
   mechanism's trainer when the plan has one (which gets the correction and the round's
   ``TrainContext``: site, round, job seed), else plain seeded steps;
3. the update ``local - global`` passes the plan's filters (client-level DP: clip and noise);
4. the algorithm releases its extras from what the site sends (post-processing, never of rows or
   state), and its new state is kept.

A simulated site (``SiteRuntime.simulation``, set only by the simulation engine) may train on
other labels (a label-flipping attack); a real node has none.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray
from torch import nn

from fedcore.aggregators.base import Arrays
from fedcore.algorithms import ClientAlgorithm, GradCorrection, TrainContext, check_extras, make_algorithm
from fedcore.clients.trainer import train_steps
from fedcore.config.job import JobRequest, NamedSpec
from fedcore.errors import ConfigError
from fedcore.models import get_arrays
from fedcore.privacy.rng import Source
from fedcore.site.plan import SitePlan

if TYPE_CHECKING:
    from fedcore.clients.runtime import SiteRuntime

__all__ = ["SimulatedSite", "TrainResult", "checked_extras", "local_update", "round_seed"]

F32 = NDArray[np.float32]
ModelFor = Callable[[NamedSpec, Arrays], AbstractContextManager[nn.Module]]


def round_seed(job_seed: int, server_round: int, site: str) -> int:
    """The shuffling seed of non-DP local training (public: a job without DP releases exact updates)."""
    digest = hashlib.sha256(f"{job_seed}/{server_round}/{site}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class TrainResult:
    """A protected update, the weight the site reports with it, its public metrics, and the
    algorithm's extras sent with it."""

    delta: Arrays
    weight: float
    metrics: dict[str, float]
    extras: Mapping[str, Arrays] = field(default_factory=dict)


class SimulatedSite(Protocol):
    """What the simulation engine may change at a simulated site (``fedcore.harness.attacks``)."""

    def train_labels(self, request: JobRequest, site: str, y: F32) -> F32:
        """The training labels ``site`` uses for ``request`` (``y``, or a poisoned copy)."""
        ...


def algorithm_of(request: JobRequest) -> ClientAlgorithm:
    """The job's client algorithm (``[algorithm]``; ``plain`` by default)."""
    return make_algorithm(request.spec.algorithm.name, request.spec.algorithm.options)


def checked_extras(
    request: JobRequest, received: Mapping[str, Arrays], global_arrays: Arrays
) -> dict[str, Arrays]:
    """The coordinator's extras for this round, when they are exactly what the job's algorithm
    takes (names, shapes, finite); ``UpdateError`` otherwise, before anything is charged."""
    declared = algorithm_of(request).extras.down
    return check_extras(received, declared, [a.shape for a in global_arrays], who="the coordinator")


def local_update(
    site: SiteRuntime,
    request: JobRequest,
    plan: SitePlan,
    *,
    server_round: int,
    global_arrays: Arrays,
    received: Mapping[str, Arrays],
    model_for: ModelFor,
) -> TrainResult:
    """Train from ``global_arrays`` as the plan and the algorithm say (see the module docstring)."""
    spec, algorithm = request.spec, algorithm_of(request)
    context = TrainContext(
        site.name, server_round, spec.seed, request.job_id, request.num_sites,
        plan.local_steps or spec.local_steps, spec.train, plan.has_dp,
    )  # fmt: skip
    state = site.algorithm_states.load(request.job_id, before=server_round)
    correction = algorithm.begin(global_arrays=global_arrays, received=received, state=state, context=context)
    y = site.data.y_train
    if site.simulation is not None:
        y = site.simulation.train_labels(request, site.name, y)
    with model_for(spec.model, global_arrays) as model:
        metrics = _train(model, site.data.x_train, y, plan, context, correction, site.source)
        delta: Arrays = tuple(a - g for a, g in zip(get_arrays(model), global_arrays, strict=True))
    for protect in plan.update_filters:
        delta = protect(delta, site.source)
    released = algorithm.release(delta, received=received, context=context)
    new = algorithm.next_state(state=state, sent=delta, released=released, received=received, context=context)
    site.algorithm_states.save(request.job_id, server_round, new)
    if plan.has_dp:  # a loss over private rows is itself a release: send only the plan's public numbers
        metrics = {"steps": float(context.local_steps)}
    charged = site.guard.ledger.job_charge(request.job_id) or (0.0, 0.0)
    report = {"epsilon": charged[0], "delta": charged[1], **site.guard.budget_report(), **plan.public}
    weight = 1.0 if plan.uniform_weight else float(plan.size.value)
    return TrainResult(delta, weight, {**metrics, **report}, released)


def _train(
    model: nn.Module,
    x: F32,
    y: F32,
    plan: SitePlan,
    context: TrainContext,
    correction: GradCorrection | None,
    source: Source,
) -> dict[str, float]:
    """The round's optimizer steps in place: the plan's trainer (DP), else plain seeded steps."""
    if correction is not None:
        _check_parameters(model, context)
    if plan.trainer is None:
        seed = round_seed(context.job_seed, context.server_round, context.site)
        return train_steps(
            model, x, y, context.train, steps=context.local_steps, seed=seed, correction=correction
        )
    trainer: Callable[..., dict[str, float]] = plan.trainer
    takes = inspect.signature(trainer).parameters
    extra: dict[str, Any] = {"correction": correction, "context": context}
    kwargs = {k: v for k, v in extra.items() if k in takes}
    return trainer(model, x, y, context.train, context.local_steps, source, **kwargs)


def _check_parameters(model: nn.Module, context: TrainContext) -> None:
    """A gradient correction is given tensor by tensor in ``state_dict`` order: the model's state
    must be exactly its trainable parameters, in that order."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if names != list(model.state_dict()):
        raise ConfigError(
            f"site {context.site!r}: the job's algorithm corrects gradients tensor by tensor, which needs a "
            f"model whose state is exactly its trainable parameters; this one has {list(model.state_dict())} "
            f"but trains {names}"
        )

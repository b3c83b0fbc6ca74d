"""This app's own plug-ins, registered when fedcore imports the module ([tool.fedcore] plugins).

Neither is part of fedcore: a job selects them by name like the built-in ones.

- ``trimmed_mean``: coordinate-wise trimmed mean of the sites' updates (Yin et al. 2018), robust to
  a minority of outlying sites.
- ``[privacy.local_dp]``: local DP at each site. The site clips its update to ``clipping_norm`` and
  adds all the Gaussian noise itself (``noise_multiplier`` x clip), so the update is protected
  against everyone, coordinator and other sites included, with no secure aggregation. Each round
  is one Gaussian release of the site's whole contribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedcore import (
    AggregateResult,
    ClientUpdate,
    MechanismPlan,
    PlanContext,
    Reader,
    register_aggregator,
    register_mechanism,
)
from fedcore.aggregators._math import check_same_shapes
from fedcore.privacy.accounting import gaussian_event
from fedcore.privacy.noise import clip_to_norm, gaussian_noise
from fedcore.privacy.rng import Source

Arrays = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class TrimmedMean:
    """Step = per-coordinate mean of the deltas after dropping the ``trim`` largest and smallest."""

    trim: int = 1

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        check_same_shapes(updates)
        k = min(self.trim, (len(updates) - 1) // 2)
        step = []
        for i in range(len(updates[0].delta)):
            stacked = np.sort(np.stack([u.delta[i] for u in updates]), axis=0)
            step.append(stacked[k : len(updates) - k].mean(axis=0))
        return AggregateResult(step=tuple(step))


@dataclass(frozen=True)
class LocalDp:
    clipping_norm: float
    noise_multiplier: float


class LocalDpMechanism:
    name = "local_dp"

    def parse(self, table: Reader) -> LocalDp:
        out = LocalDp(table.number("clipping_norm", gt=0), table.number("noise_multiplier", gt=0))
        table.done()
        return out

    def tighten(
        self, job: LocalDp | None, site: LocalDp | None, *, max_epsilon: float | None
    ) -> LocalDp | None:
        cands = [c for c in (job, site) if c is not None]
        if not cands:
            return None
        return LocalDp(min(c.clipping_norm for c in cands), max(c.noise_multiplier for c in cands))

    def plan(self, settings: LocalDp, ctx: PlanContext) -> MechanismPlan:
        c, z = settings.clipping_norm, settings.noise_multiplier

        def protect(delta: Arrays, source: Source) -> Arrays:
            return tuple(
                d + gaussian_noise(d.shape, std=z * c, source=source)
                for d in clip_to_norm(delta, clipping_norm=c)
            )

        return MechanismPlan(
            name=self.name,
            events=(gaussian_event(noise_multiplier=z, count=ctx.rounds),),
            release=f"model updates clipped to {c:g}, each with Gaussian noise {z:g} x clip added here",
            public={"local_noise_multiplier": z},
            update_filter=protect,
            uniform_weight=True,
        )


register_aggregator("trimmed_mean", TrimmedMean)
register_mechanism(LocalDpMechanism())

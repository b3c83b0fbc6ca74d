"""``[privacy.client_dp]``: client-level DP, each site clipping its update and adding a noise share.

Job and site tables: ``clipping_norm`` ``C`` and ``noise_multiplier`` ``z`` (the noise on the sum of
``num_sites`` shares is ``z C``); ``mode = "distributed"`` is the only mode a site accepts.

What a site counts on is only what it can enforce (McMahan et al. 2018, at the level of sites):

- **Central mode is refused.** The coordinator would add the noise, and no site can check that it
  does (under HE it never can).
- **Secure aggregation is required** (``[privacy.he] enabled = true``): without it the coordinator
  sees every share-noised update.
- **The charge counts the site's own share only**: ``z / sqrt(num_sites)`` per round. With one HE
  key shared by all sites, the coordinator and one colluding site can decrypt any site's
  ciphertext, so no other site's share can be relied on. A coordinator that inflates
  ``num_sites`` makes every share smaller and the charge larger, never smaller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedcore.config.reader import Reader
from fedcore.errors import PolicyError
from fedcore.privacy.accounting import gaussian_event
from fedcore.privacy.client_dp import clip_and_add_noise_share
from fedcore.privacy.mechanisms import Arrays, MechanismPlan, PlanContext, register_mechanism
from fedcore.privacy.rng import Source

__all__ = ["ClientDp", "ClientDpMechanism"]

_CENTRAL = (
    "mode = 'central' is refused by every site: the coordinator would add the noise and no site can "
    "verify that it does; use mode = 'distributed' with [privacy.he] enabled = true"
)


@dataclass(frozen=True)
class ClientDp:
    """Clip norm of each site's update and the noise multiplier of the summed shares."""

    clipping_norm: float
    noise_multiplier: float


class ClientDpMechanism:
    """Distributed client-level DP: noise shares added at the sites, summed under HE."""

    name = "client_dp"
    requires_he = True

    def parse(self, table: Reader) -> ClientDp:
        mode = table.string("mode", "distributed", doc='"distributed" only: sites add noise shares')
        if mode == "central":
            table.problem("mode", _CENTRAL)
        elif mode != "distributed":
            table.problem("mode", f"must be 'distributed', got {mode!r}")
        if table.string("clipping", "fixed", doc='"fixed" only') != "fixed":
            table.problem("clipping", "must be 'fixed' (adaptive clipping needs central mode)")
        out = ClientDp(
            clipping_norm=table.number("clipping_norm", gt=0, doc="L2 bound on each site's update"),
            noise_multiplier=table.number(
                "noise_multiplier", gt=0, doc="noise on the sum of all shares, x clip"
            ),
        )
        table.done()
        return out

    def tighten(
        self, job: ClientDp | None, site: ClientDp | None, *, max_epsilon: float | None
    ) -> ClientDp | None:
        cands = [c for c in (job, site) if c is not None]
        if not cands:
            return None
        return ClientDp(min(c.clipping_norm for c in cands), max(c.noise_multiplier for c in cands))

    def plan(self, settings: ClientDp, ctx: PlanContext) -> MechanismPlan:
        if not ctx.he:
            raise PolicyError(
                "client-level DP needs secure aggregation: without it the coordinator sees each "
                "site's update with only that site's noise share; set [privacy.he] enabled = true"
            )
        c, z, k = settings.clipping_norm, settings.noise_multiplier, ctx.num_sites
        own = z / math.sqrt(k)

        def protect(delta: Arrays, source: Source) -> Arrays:
            return clip_and_add_noise_share(
                delta, clipping_norm=c, noise_multiplier=z, num_sites=k, source=source
            )

        return MechanismPlan(
            name=self.name,
            events=(gaussian_event(noise_multiplier=own, count=ctx.rounds),),
            release=(
                f"{ctx.rounds} model updates clipped to L2 norm {c:g}, each with this site's noise share "
                f"(std {own:.4g} x clip: z = {z:g} split over {k} sites), encrypted; charged for the "
                "site's own share only"
            ),
            public={"clipping_norm": c, "share_noise_multiplier": own},
            update_filter=protect,
            uniform_weight=True,
            unit="site",
            round_events=(gaussian_event(noise_multiplier=own),),
        )


register_mechanism(ClientDpMechanism())

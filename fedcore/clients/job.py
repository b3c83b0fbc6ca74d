"""What the coordinator tells a site about the job's privacy, and the site's reconciled plan.

``JobPrivacy`` travels as JSON in the train config; ``plan_site_privacy`` tightens it with the
site's own policy and lists the ``dp_accounting`` events the whole job will cost the site.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from dp_accounting.dp_event import DpEvent

from fedcore.clients.policy import ClientDp, DpSgd, SitePolicy, tighten_client_dp, tighten_dpsgd
from fedcore.privacy.accounting import gaussian_event
from fedcore.privacy.dpsgd import DpSgdConfig, DpSgdPlan, plan_dpsgd

__all__ = ["JobPrivacy", "SitePlan", "plan_site_privacy"]


@dataclass(frozen=True)
class JobPrivacy:
    """The job's privacy request (from the job file's ``[privacy]``) plus what sites must know."""

    job_id: str
    rounds: int
    local_steps: int
    batch_size: int
    num_sites: int
    min_sites: int
    dpsgd: DpSgd | None = None
    client_dp: ClientDp | None = None
    he: bool = False
    he_weight_scale: float = 1000.0
    secure_noise: bool = True

    @classmethod
    def from_job(cls, raw: Mapping[str, Any], *, job_id: str, num_sites: int, min_sites: int) -> JobPrivacy:
        priv = dict(raw.get("privacy", {}))
        train = dict(raw.get("train", {}))
        return cls(
            job_id=job_id,
            rounds=int(raw["job"]["rounds"]),
            local_steps=int(train["local_steps"]),
            batch_size=int(train.get("batch_size", 4)),
            num_sites=num_sites,
            min_sites=min_sites,
            dpsgd=DpSgd.parse(priv.get("dpsgd"), "job [privacy.dpsgd]"),
            client_dp=ClientDp.parse(priv.get("client_dp"), "job [privacy.client_dp]"),
            he=bool(dict(priv.get("he", {})).get("enabled", False)),
            he_weight_scale=float(dict(priv.get("he", {})).get("weight_scale", 1000.0)),
            secure_noise=bool(priv.get("secure_noise", True)),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobPrivacy:
        raw = json.loads(text)
        raw["dpsgd"] = DpSgd(**raw["dpsgd"]) if raw.get("dpsgd") else None
        raw["client_dp"] = ClientDp(**raw["client_dp"]) if raw.get("client_dp") else None
        return cls(**raw)


@dataclass(frozen=True)
class SitePlan:
    """The site's effective protections for one job and their total cost as events."""

    dpsgd: DpSgd | None
    dpsgd_plan: DpSgdPlan | None
    client_dp: ClientDp | None
    client_dp_effective_multiplier: float | None
    events: tuple[DpEvent, ...]

    @property
    def dpsgd_noise_multiplier(self) -> float | None:
        return None if self.dpsgd_plan is None else self.dpsgd_plan.noise_multiplier

    @property
    def delta(self) -> float:
        """The delta at which this plan's epsilon is reported (the DP-SGD delta, else 1e-5)."""
        return self.dpsgd.delta if self.dpsgd is not None else 1e-5


def plan_site_privacy(job: JobPrivacy, policy: SitePolicy, *, num_examples: int) -> SitePlan:
    """Tighten the job's request with the site's policy and calibrate the noise to the steps that run.

    DP-SGD: ``sample_rate = batch_size / n`` (Poisson), ``steps = rounds x local_steps``; sigma is
    calibrated so the composed PLD epsilon of those steps meets the target (Abadi et al. 2016).
    Client-level distributed DP: if only ``min_sites`` of ``num_sites`` shares arrive, the sum
    carries ``z * sqrt(min_sites / num_sites)``; the site charges that worst case per round.
    """
    dp = tighten_dpsgd(policy.dpsgd, job.dpsgd, max_epsilon=policy.max_epsilon_per_job)
    cdp = tighten_client_dp(policy.client_dp, job.client_dp)
    events: list[DpEvent] = []
    dp_plan = z_eff = None
    if dp is not None:
        dp_cfg = DpSgdConfig(
            epsilon=dp.epsilon, delta=dp.delta, max_grad_norm=dp.max_grad_norm, secure=job.secure_noise
        )
        dp_plan = plan_dpsgd(
            dp_cfg,
            num_examples=num_examples,
            batch_size=job.batch_size,
            rounds=job.rounds,
            local_steps=job.local_steps,
        )
        events += dp_plan.events()
    if cdp is not None:
        share = math.sqrt(job.min_sites / job.num_sites) if cdp.mode == "distributed" else 1.0
        z_eff = cdp.noise_multiplier * share
        events.append(gaussian_event(noise_multiplier=z_eff, count=job.rounds))
    return SitePlan(dp, dp_plan, cdp, z_eff, tuple(events))

"""``[privacy.dpsgd]``: sample-level DP-SGD at every site (protects one patient, one customer).

Job and site tables: ``epsilon`` (the whole job), ``delta`` (default 1e-5), ``max_grad_norm``
(per-example clip, default 1.0). The stricter value of each wins, and the site's
``max_epsilon_per_job`` caps epsilon. The site calibrates the noise to the steps that will run
(rounds x local steps, Poisson sampling at ``batch_size / n``) before round 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedcore.config.reader import Reader
from fedcore.config.train import TrainConfig
from fedcore.privacy.dpsgd import DpSgdConfig, plan_dpsgd, train_steps_dp
from fedcore.privacy.mechanisms import F32, MechanismPlan, PlanContext, register_mechanism
from fedcore.privacy.rng import Source

__all__ = ["DpSgd", "DpSgdMechanism"]


@dataclass(frozen=True)
class DpSgd:
    """Target (epsilon, delta) for the whole job and the per-example clipping norm."""

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0


class DpSgdMechanism:
    """Opacus-style DP-SGD (Abadi et al. 2016) with fedcore's accountant and CSPRNG."""

    name = "dpsgd"

    def parse(self, table: Reader) -> DpSgd:
        out = DpSgd(
            epsilon=table.number("epsilon", gt=0, doc="target epsilon of the whole job"),
            delta=table.number("delta", 1e-5, gt=0, lt=1, doc="target delta"),
            max_grad_norm=table.number("max_grad_norm", 1.0, gt=0, doc="per-example L2 clipping norm"),
        )
        table.done()
        return out

    def tighten(self, job: DpSgd | None, site: DpSgd | None, *, max_epsilon: float | None) -> DpSgd | None:
        cands = [c for c in (job, site) if c is not None]
        if not cands:
            return None
        eps = min(c.epsilon for c in cands)
        if max_epsilon is not None:
            eps = min(eps, max_epsilon)
        return DpSgd(eps, min(c.delta for c in cands), min(c.max_grad_norm for c in cands))

    def plan(self, settings: DpSgd, ctx: PlanContext) -> MechanismPlan:
        plan = plan_dpsgd(
            DpSgdConfig(settings.epsilon, settings.delta, settings.max_grad_norm),
            num_examples=ctx.num_examples,
            batch_size=ctx.batch_size,
            rounds=ctx.rounds,
            local_steps=ctx.local_steps,
        )

        def trainer(
            model: nn.Module, x: F32, y: F32, cfg: TrainConfig, steps: int, source: Source
        ) -> dict[str, float]:
            return train_steps_dp(model, x, y, cfg, plan=plan, steps=steps, source=source)

        release = (
            f"model updates trained with DP-SGD: epsilon {settings.epsilon:g} at delta "
            f"{settings.delta:g} over {plan.steps} steps (noise multiplier "
            f"{plan.noise_multiplier:.4g}, sample rate {plan.sample_rate:.4g}, "
            f"clip {settings.max_grad_norm:g})"
        )
        return MechanismPlan(
            name=self.name,
            events=tuple(plan.events()),
            release=release,
            public={"noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate},
            trainer=trainer,
        )


register_mechanism(DpSgdMechanism())

"""``[privacy.dpsgd]``: DP-SGD at every site, per example (one row) or per customer (all its rows).

Job and site tables: ``epsilon`` (the whole job's total), ``delta`` (default 1e-5), ``max_grad_norm``
(the clip, default 1.0), ``unit`` (``"example"``, the default, or ``"customer"``) and, for customers,
``max_rows_per_customer`` (default 16: a sampled customer's rows used per step, a random subset
when it has more). The stricter value of each wins, and the site's ``max_epsilon_per_job`` caps
epsilon. The site calibrates the noise to the steps that will run (rounds x local steps, Poisson
sampling at ``batch_size / n``) before round 1, and so that DP-SGD composed with every other release
of its plan (``ctx.others``: a noisy training-set size, DP evaluations, other mechanisms) spends at
most ``epsilon`` at the budget's delta (or the job's, if smaller): the epsilon a job names is what
a site is charged in total, not DP-SGD's share of it.

Under ``unit = "customer"`` the neighbouring datasets differ by one customer's rows, ``n`` counts
customers and ``batch_size`` is the expected number of *customers* per step
(``fedcore.privacy.customer_dpsgd``). Which column names a customer is the site's decision
(``[privacy] unit_column`` in its site file), never the coordinator's. A site whose own table says
``unit = "customer"`` refuses a job asking for ``"example"`` (it does not quietly change the job).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from torch import nn

from fedcore.algorithms.base import GradCorrection, TrainContext
from fedcore.config.reader import Reader
from fedcore.config.train import TrainConfig
from fedcore.errors import PolicyError, PrivacyError
from fedcore.privacy.customer_dpsgd import train_steps_customer_dp
from fedcore.privacy.dpsgd import DpSgdConfig, DpSgdPlan, plan_dpsgd, train_steps_dp
from fedcore.privacy.mechanisms import F32, MechanismPlan, PlanContext, PrivacyUnit, register_mechanism
from fedcore.privacy.rng import Source

__all__ = ["DpSgd", "DpSgdMechanism"]

_UNITS = ("example", "customer")


@dataclass(frozen=True)
class DpSgd:
    """Target (epsilon, delta) for the whole job, the clipping norm, and the privacy unit."""

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    unit: PrivacyUnit = "example"
    max_rows_per_customer: int = 16


class DpSgdMechanism:
    """Opacus-style DP-SGD (Abadi et al. 2016), or user-level DP-SGD (McMahan et al. 2018)."""

    name = "dpsgd"

    def parse(self, table: Reader) -> DpSgd:
        unit = table.string(
            "unit", "example", choices=_UNITS, doc="what one epsilon protects: one row, or one customer"
        )
        out = DpSgd(
            epsilon=table.number("epsilon", gt=0, doc="target epsilon of the whole job"),
            delta=table.number("delta", 1e-5, gt=0, lt=1, doc="target delta"),
            max_grad_norm=table.number(
                "max_grad_norm", 1.0, gt=0, doc="L2 clipping norm of one example's (or customer's) gradient"
            ),
            unit=cast(PrivacyUnit, unit),
            max_rows_per_customer=table.integer(
                "max_rows_per_customer",
                16,
                ge=1,
                doc='unit = "customer": rows of a sampled customer per step',
            ),
        )
        if unit != "customer" and "max_rows_per_customer" in table.table:
            table.problem("max_rows_per_customer", 'applies only with unit = "customer"')
        table.done()
        return out

    def tighten(self, job: DpSgd | None, site: DpSgd | None, *, max_epsilon: float | None) -> DpSgd | None:
        cands = [c for c in (job, site) if c is not None]
        if not cands:
            return None
        if job is not None and site is not None and site.unit == "customer" and job.unit == "example":
            raise PolicyError(
                'its policy requires customer-level DP-SGD and the job asks for unit = "example"; '
                'set [privacy.dpsgd] unit = "customer" in the job'
            )
        eps = min(c.epsilon for c in cands)
        if max_epsilon is not None:
            eps = min(eps, max_epsilon)
        unit: PrivacyUnit = "customer" if any(c.unit == "customer" for c in cands) else "example"
        rows = min(c.max_rows_per_customer for c in cands)
        return DpSgd(eps, min(c.delta for c in cands), min(c.max_grad_norm for c in cands), unit, rows)

    def target_epsilon(self, settings: DpSgd) -> float:
        return settings.epsilon

    def plan(self, settings: DpSgd, ctx: PlanContext) -> MechanismPlan:
        customer = settings.unit == "customer"
        units = ctx.units
        if customer and units is None:
            raise PolicyError(
                'the job asks for customer-level DP-SGD (unit = "customer") but this site names no '
                "customer column: its operator sets [privacy] unit_column in the site file"
            )
        delta = settings.delta if ctx.delta is None else min(settings.delta, ctx.delta)
        try:
            plan = plan_dpsgd(
                DpSgdConfig(settings.epsilon, delta, settings.max_grad_norm, ctx.accountant),
                num_examples=ctx.num_examples,
                batch_size=ctx.batch_size,
                rounds=ctx.rounds,
                local_steps=ctx.local_steps,
                others=ctx.others,
            )
        except PrivacyError as err:  # too little left beside the other releases
            raise PolicyError(
                f"DP-SGD cannot meet the job's total epsilon {settings.epsilon:g}: {err}"
            ) from err

        def trainer(
            model: nn.Module,
            x: F32,
            y: F32,
            cfg: TrainConfig,
            steps: int,
            source: Source,
            *,
            correction: GradCorrection | None = None,
            context: TrainContext | None = None,
        ) -> dict[str, float]:
            if not customer or units is None:
                return train_steps_dp(
                    model, x, y, cfg, plan=plan, steps=steps, source=source, correction=correction
                )
            rows = settings.max_rows_per_customer
            return train_steps_customer_dp(
                model, x, y, units, cfg, plan=plan, max_rows=rows, steps=steps, source=source,
                correction=correction,
            )  # fmt: skip

        return MechanismPlan(
            name=self.name,
            events=tuple(plan.events()),
            release=_release(settings, plan, shared=bool(ctx.others)),
            public={"noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate},
            trainer=trainer,
            unit=settings.unit,
            round_events=(plan.round_event(),),
        )


def _release(settings: DpSgd, plan: DpSgdPlan, *, shared: bool) -> str:
    per = (
        f"per customer (sample rate {plan.sample_rate:.4g} over customers, <= "
        f"{settings.max_rows_per_customer} rows each, clip {settings.max_grad_norm:g} per customer)"
        if settings.unit == "customer"
        else f"per example (sample rate {plan.sample_rate:.4g}, clip {settings.max_grad_norm:g})"
    )
    head = (
        f"model updates trained with DP-SGD {per} over {plan.steps} steps "
        f"(noise multiplier {plan.noise_multiplier:.4g})"
    )
    target = f"epsilon {settings.epsilon:g} at delta {plan.config.delta:g}"
    if shared:
        return f"{head}, calibrated so that the job's total, its other releases included, is {target}"
    return f"{head}, calibrated to {target} for the whole job"


register_mechanism(DpSgdMechanism())

"""Statistics under secure aggregation with distributed DP: the noise, each site's plan, its answer.

A noisy batch (``[job] secagg = true``, ``noise = "ddgauss"`` or ``"skellam"``, ``noise_multiplier =
z``) asks for the exact batch's integer vector (``fedcore.analytics.exact``: counts, histograms,
proportions) with every site adding integer noise to it before masking, so the coordinator learns
only the sum of the survivors' counts plus the sum of their noise (the distributed discrete
Gaussian of Kairouz, Liu & Steinke, ICML 2021; the distributed Skellam of Agarwal, Kairouz & Liu,
NeurIPS 2021; samplers in ``fedcore.secagg.noise``).

Sensitivity (public: the queries and the schema, never the data). One unit (a row; at a site with
``[privacy] unit_column``, up to ``rows_per_unit`` rows of one customer per statistic, a random subset
drawn by the site) added or removed moves a count by at most ``m`` in one group (L1 = L2 = m), a
histogram by at most ``m`` over its bins (L1 = m, L2 <= m), a proportion's pair ``[n, events]`` by at
most ``m`` each (L1 = 2m, L2 = sqrt(2) m); groups are disjoint. Over the batch ``L2 = sqrt(sum
L2_q^2)`` and ``L1 = sum L1_q``.

Noise. ``z`` sets the summed noise's std per integer to ``z L2`` (``m = rows_per_unit`` of each
statistic: the same at every site); each of the ``num_sites`` sites the batch went to adds
``N_Z(0, (z L2)^2 / num_sites)`` or ``Sk((z L2)^2 / num_sites)`` per integer, so the sum over ``s``
survivors holds noise of std ``z L2 sqrt(s / num_sites)`` (``summed_std``, in the coordinator's
report). Means and proportions are read back from the noisy sums (post-processing).

Charge: the site's, from its own file (``plan_noisy``). Its sensitivity (``m`` its own unit rows),
the noise it counts (``[secagg] trust``: ``"own"`` only its own, as if every other site's noise
were known to the coordinator; ``"threshold"`` the noise of the honest sites every openable sum
contains, ``fedcore.secagg.policy.planned_min_honest``), the vector's length, at its budget's
delta: one zCDP event (``fedcore.secagg.dp.round_event``), reserved at admission (refused when it
exceeds the site's caps or remaining budget) and charged at its one answer, like any statistics
batch. A noisy batch needs no ``exact_statistics = true``: that opt-in is for sums without noise.
Which plan applies is decided here, once (``plan_secure``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
from dp_accounting.dp_event import DpEvent
from numpy.typing import NDArray

from fedcore.analytics.exact import (
    MODULUS_BITS,
    batch_problems,
    exact_answer,
    exact_layout,
    exact_point,
    plan_exact,
)
from fedcore.analytics.query import QueryJob, QueryRequest, QuerySpec
from fedcore.analytics.rows import filtered
from fedcore.analytics.site import StatisticsPlan, bound_units, unit_rows
from fedcore.config.site import SiteConfig
from fedcore.errors import PolicyError, PrivacyError
from fedcore.privacy.accounting import epsilon
from fedcore.privacy.rng import Source
from fedcore.secagg.dp import DistributedNoise, Mechanism, Trust, round_event
from fedcore.secagg.encoding import FixedPoint
from fedcore.secagg.noise import draw

__all__ = [
    "SLACK_SIGMAS",
    "noisy_point",
    "plan_noisy",
    "plan_secure",
    "secure_answer",
    "secure_point",
    "sensitivity",
    "site_noise",
    "summed_std",
]

SLACK_SIGMAS = 14
"""Room for a site's noise in the modulus: 14 stds (a draw beyond it is an error, p < 1e-44)."""


def _unit_sensitivity(query: QuerySpec, m: int) -> tuple[float, float]:
    return (math.sqrt(2) * m, 2.0 * m) if query.stat == "proportion" else (float(m), float(m))


def sensitivity(job: QueryJob, site: SiteConfig | None = None) -> tuple[float, float]:
    """(L2, L1) of one unit over the batch's vector: ``m = rows_per_unit`` of each statistic, or with
    ``site`` the rows of one unit that enter at that site (``unit_rows``: 1 without a unit column)."""
    parts = [
        _unit_sensitivity(q, q.rows_per_unit if site is None else unit_rows(q, site)) for q in job.queries
    ]
    return math.sqrt(sum(l2 * l2 for l2, _ in parts)), sum(l1 for _, l1 in parts)


def site_noise(request: QueryRequest) -> DistributedNoise:
    """One site's noise per integer (``PolicyError`` for a batch without noise)."""
    job = request.job
    if not job.noisy:
        raise PolicyError(f"statistics {request.job_id!r} ask for no distributed noise")
    std = job.noise_multiplier * sensitivity(job)[0] / math.sqrt(request.num_sites)
    if job.noise == "ddgauss":
        return DistributedNoise(Mechanism.DISCRETE_GAUSSIAN, std)
    return DistributedNoise(Mechanism.SKELLAM, std * std)


def summed_std(request: QueryRequest, survivors: int) -> float:
    """The std of the noise in each integer of the sum over ``survivors`` sites."""
    return (
        request.job.noise_multiplier * sensitivity(request.job)[0] * math.sqrt(survivors / request.num_sites)
    )


def _site_std(noise: DistributedNoise) -> float:
    return noise.scale if noise.mechanism is Mechanism.DISCRETE_GAUSSIAN else math.sqrt(noise.scale)


def noisy_point(request: QueryRequest) -> FixedPoint:
    """Integers mod 2^32 with room for each site's noise (``PolicyError`` when the noise leaves none)."""
    n, std = request.num_sites, _site_std(site_noise(request))
    slack = math.ceil(SLACK_SIGMAS * std)
    bound = (2 ** (MODULUS_BITS - 1) - 1) // n - 1 - slack
    if bound < 1:
        raise PolicyError(
            f"statistics {request.job_id!r}: noise of std {std:.4g} per site "
            f"leaves no room in 2^{MODULUS_BITS} for {n} sites; lower noise_multiplier"
        )
    return FixedPoint(scale=1.0, bound=float(bound), modulus_bits=MODULUS_BITS, noise_slack=slack)


def secure_point(request: QueryRequest) -> FixedPoint:
    """The words of a batch under secure aggregation: exact, or with room for the noise."""
    return noisy_point(request) if request.job.noisy else exact_point(request.num_sites)


def _event(
    job: QueryJob, site: SiteConfig, noise: DistributedNoise, trust: Trust, honest: int, dim: int
) -> DpEvent:
    l2, l1 = sensitivity(job, site)
    return round_event(
        noise, l2_sensitivity=l2, l1_sensitivity=l1, dim=dim, trust=trust, min_honest=honest,
        planned_rounds=1, delta=site.policy.budget_delta,
    )  # fmt: skip


def plan_noisy(request: QueryRequest, site: SiteConfig) -> StatisticsPlan:
    """The site's plan for a noisy batch: its epsilon from its own file; ``PolicyError`` naming every
    reason it refuses (the budget itself is checked when the guard reserves the plan)."""
    policy, cfg, job, reasons = site.policy, site.secagg, request.job, batch_problems(request, site)
    if cfg is None:
        reasons.append("its site file has no [secagg] section (its identity and the members it accepts)")
    if policy.budget_epsilon is None:
        reasons.append(
            "it has no privacy budget for statistics: set [privacy] budget_epsilon in its site file"
        )
    if reasons:
        raise PolicyError(f"site {site.name!r} refuses statistics {request.job_id!r}: " + "; ".join(reasons))
    assert cfg is not None
    trust = Trust(cfg.trust)
    honest = cfg.planned_min_honest(request.num_sites)
    layout, delta = exact_layout(request, site), policy.budget_delta
    try:
        noisy_point(request)
        noise = site_noise(request)
        event = _event(job, site, noise, trust, honest, sum(len(g) * w for g, w in layout))
        alone = [
            epsilon([_event(replace(job, queries=(q,)), site, noise, trust, honest, len(g) * w)], delta=delta)
            for q, (g, w) in zip(job.queries, layout, strict=True)
        ]  # what each statistic's part would cost alone: the plan's table and the per-query cap
    except PrivacyError as err:
        raise PolicyError(f"site {site.name!r} refuses statistics {request.job_id!r}: {err}") from err
    total = epsilon([event], delta=delta)
    _check_caps(request, site, alone, total)
    return StatisticsPlan(
        request.job_id, request.digest, tuple(q.name for q in job.queries), tuple(alone), (event,), total,
        delta, False, 1.0, "customer" if policy.unit_column else "example", secagg=True,
        min_cell_size=policy.min_cell_size, layout=layout, noise=job.noise, trust=trust.value,
    )  # fmt: skip


def _check_caps(request: QueryRequest, site: SiteConfig, alone: list[float], total: float) -> None:
    policy, reasons = site.policy, []
    cap = policy.max_epsilon_per_query
    for q, eps in zip(request.job.queries, alone, strict=True):
        if cap is not None and eps > cap + 1e-9:
            reasons.append(f"{q.name}: epsilon {eps:.4g} > max_epsilon_per_query {cap:g}")
    cap = policy.max_epsilon_per_job
    if cap is not None and total > cap + 1e-9:
        reasons.append(f"the batch costs epsilon {total:.4g} > max_epsilon_per_job {cap:g}")
    if reasons:
        raise PolicyError(
            f"site {site.name!r} refuses statistics {request.job_id!r}: "
            + "; ".join(reasons)
            + "; ask for a larger noise_multiplier"
        )


def plan_secure(request: QueryRequest, site: SiteConfig) -> StatisticsPlan:
    """The site's plan for a batch under secure aggregation: noisy (charged) or exact (opt-in)."""
    return plan_noisy(request, site) if request.job.noisy else plan_exact(request, site)


def secure_answer(
    request: QueryRequest, site: SiteConfig, frame: pd.DataFrame, *, source: Source
) -> NDArray[np.int64]:
    """The site's integers for a batch under secure aggregation (before masking): exact counts over
    every row, or, noisy, over at most ``unit_rows`` rows per unit, plus this site's noise."""
    if not request.job.noisy:
        return exact_answer(request, site, frame)
    unit = site.policy.unit_column

    def rows(q: QuerySpec) -> pd.DataFrame:
        return frame if unit is None else bound_units(filtered(q, frame), unit, unit_rows(q, site), source)

    ints = exact_answer(request, site, frame, rows=rows)
    return ints + draw(site_noise(request), source, size=ints.size)

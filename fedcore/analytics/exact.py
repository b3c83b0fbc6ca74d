"""Exact statistics under secure aggregation: a site's integer answer, its plan, and the sums read back.

With ``[job] secagg = true`` a batch asks for counts, histograms and proportions (``EXACT_STATS``)
with no noise. Each site turns its answer into one integer vector (per statistic, per declared
group: a count is ``[n]``, a histogram its bin counts, a proportion ``[n, rows meeting of]``; a
mean or proportion is post-processing of these), which SecAgg+ masks (``fedcore.secagg``): the
coordinator learns only the sum over the round's survivors, never one site's vector
(Bonawitz et al. 2017; Bell et al. 2020). The layout (which integer is what) depends only on the
query and the schema, never on the data.

An exact sum is a release with no DP: a site answers such a batch only if its ``[secagg]`` says
``exact_statistics = true``, its answer is computed and masked once (the guard's once-only answer),
it signs one survivor set for the batch (its one confirmed claim, ``fedcore.site.sums``), and that
set has at least its ``min_sites`` floor of sites. Nothing is charged to the ledger (no epsilon);
the plan records the release. Small cells: a site never sees the sum, so it cannot suppress a cell
of it; its ``min_cell_size`` is applied by the coordinator's report to the *summed* counts (cells of
the sum below the largest ``min_cell_size`` the survivors state are reported as suppressed). That
is a reporting rule, not a guarantee against a malicious coordinator, which reads every summed
cell: what a site relies on is that its counts appear only inside a sum over at least
``min_sites`` sites.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from fedcore.analytics.query import EXACT_STATS, QueryRequest, QuerySpec
from fedcore.analytics.rows import bin_labels, check_query, group_labels, grouped_rows, values_of
from fedcore.analytics.site import StatisticsPlan, histogram_input
from fedcore.config.site import SiteConfig
from fedcore.errors import PolicyError
from fedcore.secagg.encoding import FixedPoint

__all__ = [
    "MODULUS_BITS",
    "batch_problems",
    "exact_answer",
    "exact_layout",
    "exact_point",
    "exact_sums",
    "plan_exact",
    "width",
]

MODULUS_BITS = 32
"""Sums mod 2^32: a site's count may be up to ``(2^31 - 1) / num_sites - 1`` (else an error)."""


def exact_point(num_sites: int) -> FixedPoint:
    """Integers as they are (scale 1), bounded so that a sum of ``num_sites`` answers cannot wrap."""
    return FixedPoint(scale=1.0, bound=float((2 ** (MODULUS_BITS - 1) - 1) // num_sites - 1), modulus_bits=32)


def width(query: QuerySpec, site: SiteConfig) -> int:
    """Integers per group of ``query``."""
    if query.stat == "histogram":
        return len(query.bins) - 1 if query.bins else len(histogram_input(query, site, _no_rows(site))[1])
    return 2 if query.stat == "proportion" else 1


def _no_rows(site: SiteConfig) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series(dtype=float) for c in site.columns})


def _group_ints(query: QuerySpec, site: SiteConfig, rows: pd.DataFrame) -> list[int]:
    if query.stat == "count":
        return [len(rows)]
    if query.stat == "proportion":
        flags = values_of(query, rows)
        return [len(flags), int(flags.sum())]
    values, cats = histogram_input(query, site, rows)
    index = {c: i for i, c in enumerate(cats)}
    out = np.zeros(len(cats), dtype=np.int64)
    hits = [index[v] for v in values if v in index]  # out-of-range values fall in no bin
    np.add.at(out, np.asarray(hits, dtype=np.int64), 1)
    return [int(v) for v in out]


def exact_answer(
    request: QueryRequest,
    site: SiteConfig,
    frame: pd.DataFrame,
    *,
    rows: Callable[[QuerySpec], pd.DataFrame] | None = None,
) -> NDArray[np.int64]:
    """The site's whole answer to a batch under secure aggregation: every statistic's groups'
    integers, concatenated; ``rows`` gives a statistic's rows (default ``frame``: every row)."""
    parts: list[int] = []
    for q in request.job.queries:
        own = frame if rows is None else rows(q)
        groups = grouped_rows(q, site, own)
        for label in group_labels(q, site):
            ints = _group_ints(q, site, groups.get(label, own.iloc[0:0]))
            if len(ints) != width(q, site):
                raise PolicyError(f"{q.name}: {len(ints)} integers, the layout has {width(q, site)}")
            parts.extend(ints)
    return np.asarray(parts, dtype=np.int64)


def exact_layout(request: QueryRequest, site: SiteConfig) -> tuple[tuple[tuple[str, ...], int], ...]:
    """Per statistic: its declared groups and the integers per group (public, in the plan)."""
    return tuple((tuple(group_labels(q, site)), width(q, site)) for q in request.job.queries)


def batch_problems(request: QueryRequest, site: SiteConfig) -> list[str]:
    """What makes ``site`` refuse any batch under secure aggregation, exact or noisy: its
    ``min_sites`` floor, the batch's own ``min_sites``, and each statistic (exact statistics only)."""
    job, floor, reasons = request.job, site.policy.min_sites, []
    if request.num_sites < floor or job.min_sites < floor:
        reasons.append(
            f"it answers only batches planned for >= {floor} sites (min_sites in its policy); this one has "
            f"num_sites {request.num_sites}, min_sites {job.min_sites}"
        )
    if job.min_sites > request.num_sites:
        reasons.append(f"min_sites {job.min_sites} exceeds the {request.num_sites} sites it was sent to")
    for q in job.queries:
        try:
            if q.stat not in EXACT_STATS:
                raise PolicyError(f"{q.stat} is not a sum of counts ({', '.join(EXACT_STATS)})")
            check_query(q, site)
        except PolicyError as err:
            reasons.append(f"{q.name}: {err}")
    return reasons


def plan_exact(request: QueryRequest, site: SiteConfig) -> StatisticsPlan:
    """The site's plan for an exact batch (no DP events); ``PolicyError`` naming every reason. The
    site answers only if its own ``[secagg]`` says ``exact_statistics = true``."""
    reasons = []
    if site.secagg is None or not site.secagg.exact_statistics:
        reasons.append(
            "it releases exact statistics only if its site file says [secagg] exact_statistics = true"
        )
    reasons += batch_problems(request, site)
    if reasons:
        raise PolicyError(f"site {site.name!r} refuses statistics {request.job_id!r}: " + "; ".join(reasons))
    return StatisticsPlan(
        request.job_id, request.digest, tuple(q.name for q in request.job.queries),
        tuple(0.0 for _ in request.job.queries), (), 0.0, site.policy.budget_delta, False, 1.0,
        secagg=True, min_cell_size=site.policy.min_cell_size, layout=exact_layout(request, site),
    )  # fmt: skip


def exact_sums(
    queries: Sequence[QuerySpec],
    layout: Sequence[tuple[Sequence[str], int]],
    total: NDArray[np.int64],
    *,
    min_cell_size: int,
    noise_std: float | None = None,
) -> list[dict[str, Any]]:
    """The summed vector read back per statistic and group (``layout``: the sites' plans'); a group
    whose summed count is below ``min_cell_size`` is reported as suppressed (a reporting rule: see
    the module docstring). ``noise_std``: the summed noise's std per integer of a noisy batch
    (``fedcore.analytics.noisy``), reported with each statistic (then not ``exact``)."""
    out, start = [], 0
    for q, (labels, n) in zip(queries, layout, strict=True):
        groups: dict[str, Any] = {}
        for label in labels:
            ints = [int(v) for v in total[start : start + n]]
            start += n
            count = sum(ints) if q.stat == "histogram" else ints[0]
            groups[label] = {"suppressed": True} if count < min_cell_size else _read(q, ints)
        noise = {} if noise_std is None else {"noise_std": noise_std}
        out.append({"name": q.name, "stat": q.stat, "exact": noise_std is None, **noise, "groups": groups})
    if start != len(total):
        raise PolicyError(f"the sum holds {len(total)} integers, the batch's layout {start}")
    return out


def _read(query: QuerySpec, ints: list[int]) -> Mapping[str, Any]:
    if query.stat == "count":
        return {"count": ints[0]}
    if query.stat == "proportion":
        share = ints[1] / ints[0] if ints[0] > 0 else None  # a noisy count may be <= 0
        return {"count": ints[0], "events": ints[1], "proportion": share}
    labels = bin_labels(query.bins) if query.bins else None
    return {"counts": ints, **({"bins": labels} if labels and len(labels) <= 64 else {})}

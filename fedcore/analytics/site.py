"""A site's side of statistics: its plan for a batch (or its refusal), its answers, its decryptions.

Policy first (``plan_statistics``): the schema's classification (``fedcore.analytics.rows``), the
site's floor on ``min_sites``, the per-query and per-job epsilon caps, and its budget (the guard
reserves the plan's cost in the ledger, as for training). Then each answer (``answer_statistics``):
per group, the rows' values clamped to public bounds and released by OpenDP (``fedcore.analytics.dp``);
a group whose noisy count is below the site's ``min_cell_size`` is suppressed. Groups are disjoint
(a row is in at most one), so a grouped query costs what one group costs (parallel composition).

How a statistic spends its epsilon: a count, a histogram and a quantile tree spend all of it; a
sum, a mean and a proportion half on the count and half on the sum (centred at the bounds' middle
for means); a variance a third each on the count, the sum and the sum of squares.

Under HE (``[job] he = true``) a site encrypts its noisy totals (``fedcore.he``) and adds either its
full noise or, if its policy says ``he_noise_share = "split"``, a ``1 / min_sites`` share of it, so
that ``min_sites`` shares add up to the noise of one central release. The coordinator adds the
ciphertexts, and every site that answered confirms the one set of sums of the batch
(``fedcore.site.sums``: a site confirms one claim per batch, so its answer opens in exactly one sum per
statistic, whoever opens it: no difference of sums isolates a site). A site decrypts a sum
(``decrypt_totals``, once per statistic) only with every contributor's confirmation, at least its
floor of contributors (``min_sites``), values within what that many sites encrypt, and suppresses
small groups on the decrypted counts. Each site's vector ends with its *marker*
(``fedcore.he.markers``), which only holders of the federation's secret key can compute; the
decrypting site checks that the sum's trailer is the sum of the named sites' markers, so a sum holds
exactly one answer of each contributor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from dp_accounting.dp_event import DpEvent
from numpy.typing import NDArray

from fedcore.analytics.dp import (
    Release,
    Share,
    dp_count,
    dp_histogram,
    dp_quantiles,
    dp_sum,
    dp_sum_of_squares,
)
from fedcore.analytics.query import QueryRequest, QuerySpec
from fedcore.analytics.rows import (
    bounds_of,
    check_query,
    column_spec,
    filtered,
    group_labels,
    grouped_rows,
    values_of,
)
from fedcore.analytics.wire import release_to_dict
from fedcore.config.site import SiteConfig
from fedcore.errors import PolicyError, PrivacyError
from fedcore.he import EncryptedUpdate, SecretContext, decrypt_integers, encrypt_integers
from fedcore.he.markers import marker, marker_sum
from fedcore.he.site import SumCheck
from fedcore.privacy.accounting import compose, epsilon, event_to_json
from fedcore.privacy.rng import Source
from fedcore.site.sums import SumClaim, check_claim

__all__ = [
    "QUANTILE_BINS",
    "StatisticsPlan",
    "answer_statistics",
    "bound_units",
    "decrypt_totals",
    "group_releases",
    "histogram_input",
    "lattice_ints",
    "layout",
    "plan_statistics",
    "unit_rows",
]

QUANTILE_BINS, BRANCHING = 64, 4
"""Quantile trees: 64 equal bins between the bounds, branching 4 (4 layers below the root)."""


@dataclass(frozen=True)
class StatisticsPlan:
    """A site's plan for a batch: the cost of each statistic and of the whole, and its HE noise share."""

    job_id: str
    digest: str
    names: tuple[str, ...]
    epsilons: tuple[float, ...]
    events: tuple[DpEvent, ...]
    epsilon: float
    delta: float
    he: bool
    share: float
    unit: str = "example"
    secagg: bool = False  # exact answers summed under secure aggregation (fedcore.analytics.exact)
    min_cell_size: int = 0  # exact: the site's min_cell_size, for the report of the sums
    layout: tuple[tuple[tuple[str, ...], int], ...] = ()  # exact: per statistic, its groups and width
    noise: str = "none"  # under secagg: the batch's distributed noise (fedcore.analytics.noisy)
    trust: str = "own"  # noisy: whose noise the site counts (its [secagg] trust)

    @property
    def limits(self) -> dict[str, int]:
        """One answer (round 1), and under HE one decryption per statistic (rounds 2, 3, ...)."""
        return {"query": 1 + (len(self.names) if self.he else 0)}

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "statistics",
            "epsilon": self.epsilon,
            "delta": self.delta,
            "he": self.he,
            "noise_share": self.share,
            "unit": self.unit,
            "queries": [{"name": n, "epsilon": e} for n, e in zip(self.names, self.epsilons, strict=True)],
        } | (self._exact() if self.secagg else {})

    def _exact(self) -> dict[str, Any]:
        layout = [{"groups": list(g), "width": w} for g, w in self.layout]
        noisy = {} if self.noise == "none" else {"trust": self.trust}
        secagg = "exact" if self.noise == "none" else self.noise
        return {"secagg": secagg, "min_cell_size": self.min_cell_size, "layout": layout} | noisy

    def text(self, queries: Sequence[QuerySpec]) -> str:
        """The audit line: every statistic, with its epsilon."""
        how = f", under HE with a {self.share:g} noise share" if self.he else ""
        if self.secagg:
            each = "; ".join(f"{q.name}: {q.describe()}" for q in queries)
            if self.noise != "none":
                return (
                    f"statistics plan reserved: sums under secure aggregation with {self.noise} noise, "
                    f"epsilon {self.epsilon:.4g} per {self.unit} (trust {self.trust}): {each}"
                )
            return f"statistics plan reserved: exact sums under secure aggregation (no DP): {each}"
        each = "; ".join(f"{q.name}: {q.describe()} (epsilon {q.epsilon:g})" for q in queries)
        return f"statistics plan reserved: epsilon {self.epsilon:.4g} per {self.unit}{how}: {each}"


def _categories(query: QuerySpec, site: SiteConfig) -> tuple[list[Any], Any]:
    """A histogram's categories and how to map a column value to one (bins: their index)."""
    if query.bins:
        return list(range(len(query.bins) - 1)), None
    levels = column_spec(site, query.column or "", "column").levels
    if all(isinstance(v, int | float) and float(v).is_integer() for v in levels):
        return [int(v) for v in levels], int
    return [str(v) for v in levels], str


def histogram_input(query: QuerySpec, site: SiteConfig, rows: pd.DataFrame) -> tuple[list[Any], list[Any]]:
    cats, cast = _categories(query, site)
    col = rows[query.column or ""]
    known = col[col.notna()].to_numpy()
    if query.bins:
        index = np.digitize(known.astype(float), np.asarray(query.bins)) - 1
        return [int(i) for i in index], cats  # -1 and len(bins)-1 fall outside: OpenDP's null category
    assert cast is not None
    if cast is int and not all(float(v).is_integer() for v in known):
        return [str(v) for v in known], [str(c) for c in cats]
    return [cast(v) for v in known], cats


def unit_rows(query: QuerySpec, site: SiteConfig) -> int:
    """How many of one unit's rows may enter ``query`` at ``site``: the query's ``rows_per_unit``
    where the site names a privacy unit (``[privacy] unit_column``), else 1 (the unit is the row)."""
    return query.rows_per_unit if site.policy.unit_column else 1


def bound_units(rows: pd.DataFrame, column: str, limit: int, source: Source) -> pd.DataFrame:
    """At most ``limit`` rows of each unit (``column``'s value), a uniformly random subset drawn from
    the site's CSPRNG; rows without a unit id are left out (they could belong to any unit)."""
    rows = rows[rows[column].notna()]
    if rows.empty:
        return rows
    keys = source.uniform(len(rows)).numpy()
    ordered = rows.iloc[np.lexsort((keys, rows[column].to_numpy()))]
    return ordered[ordered.groupby(column, sort=False).cumcount().to_numpy() < limit]


def group_releases(
    query: QuerySpec, site: SiteConfig, rows: pd.DataFrame, share: Share | None
) -> list[Release]:
    """One group's releases (see the module docstring for how the epsilon is split). Under a privacy
    unit every release's sensitivity and noise are ``unit_rows`` times a row's (``bound_units`` has
    left at most that many rows per unit in all groups together: for the additive noise used here a
    unit's losses over disjoint groups add up to at most one release's)."""
    eps, m = query.epsilon, unit_rows(query, site)
    if query.stat == "count":
        return [dp_count(len(rows), epsilon=eps, share=share, unit_rows=m)]
    if query.stat == "histogram":
        values, cats = histogram_input(query, site, rows)
        return [dp_histogram(values, categories=cats, epsilon=eps, share=share, unit_rows=m)]
    bounds = bounds_of(query, site)
    if bounds is None:  # check_query refuses this before any answer
        raise PolicyError(f"{query.name}: no bounds to clamp {query.column!r} to")
    x = values_of(query, rows)
    if query.stat == "quantile":
        return [
            dp_quantiles(
                x, bounds=bounds, quantiles=query.quantiles, epsilon=eps, bins=QUANTILE_BINS,
                branching_factor=BRANCHING, share=share, unit_rows=m,
            )
        ]  # fmt: skip
    parts = 3 if query.stat == "variance" else 2
    center = 0.0 if query.stat == "sum" else (bounds[0] + bounds[1]) / 2
    out = [
        dp_count(len(x), epsilon=eps / parts, share=share, unit_rows=m),
        dp_sum(x, bounds=bounds, epsilon=eps / parts, center=center, share=share, unit_rows=m),
    ]
    if query.stat == "variance":
        out.append(
            dp_sum_of_squares(x, bounds=bounds, epsilon=eps / parts, center=center, share=share, unit_rows=m)
        )
    return out


def _noisy_count(query: QuerySpec, releases: Sequence[Release]) -> float:
    """The group's noisy row count, from what is released anyway (post-processing, free)."""
    first = releases[0]
    if query.stat == "histogram":
        return float(sum(first.values))
    return first.values[0]  # a count, or a quantile tree's root


def _empty(site: SiteConfig) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series(dtype=float) for c in site.columns})


_NO_SHARE = Share(1.0, lambda n: np.zeros(n))
"""Stands in for a site's noise share when the layout is computed on no rows (sums under HE use a
coarser lattice, so the layout must know whether the batch is under HE)."""


def layout(query: QuerySpec, site: SiteConfig, *, he: bool) -> list[Release]:
    """The releases of one group with no values that matter: a query's public form and cost.

    Computed by running the query on no rows: every parameter of the releases (scales, lattices,
    sensitivities, events) depends only on the query, the schema and ``he``, never on the data.
    """
    return group_releases(query, site, _empty(site), _NO_SHARE if he else None)


def plan_statistics(request: QueryRequest, site: SiteConfig) -> StatisticsPlan:
    """The site's plan for ``request``; ``PolicyError`` naming every reason when it refuses."""
    policy, job = site.policy, request.job
    reasons = []
    floor = policy.min_sites
    if request.num_sites < floor or job.min_sites < floor:
        reasons.append(
            f"it answers only batches planned for >= {floor} sites (min_sites in its policy); this one has "
            f"num_sites {request.num_sites}, min_sites {job.min_sites}"
        )
    if job.min_sites > request.num_sites:
        reasons.append(f"min_sites {job.min_sites} exceeds the {request.num_sites} sites it was sent to")
    if policy.budget_epsilon is None:
        reasons.append(
            "it has no privacy budget for statistics: set [privacy] budget_epsilon in its site file"
        )
    if policy.site_statistics == "withhold" and not job.he:
        reasons.append(
            'it answers statistics only under HE (site_statistics = "withhold"): set [job] he = true'
        )
    events: list[DpEvent] = []
    for q in job.queries:
        cap = policy.max_epsilon_per_query
        if cap is not None and q.epsilon > cap + 1e-12:
            reasons.append(f"{q.name}: epsilon {q.epsilon:g} > max_epsilon_per_query {cap:g}; ask for less")
        try:
            check_query(q, site)
            events.append(compose([r.event for r in layout(q, site, he=job.he)]))
        except (PolicyError, PrivacyError) as err:
            reasons.append(f"{q.name}: {err}")
    if reasons:
        raise PolicyError(f"site {site.name!r} refuses statistics {request.job_id!r}: " + "; ".join(reasons))
    total = epsilon(events, delta=policy.budget_delta)
    cap = policy.max_epsilon_per_job
    if cap is not None and total > cap + 1e-9:
        raise PolicyError(
            f"site {site.name!r} refuses statistics {request.job_id!r}: the batch costs epsilon {total:.4g} "
            f"(composed) > max_epsilon_per_job {cap:g}; ask for fewer statistics or less epsilon"
        )
    share = 1.0 / job.min_sites if job.he and policy.he_noise_share == "split" else 1.0
    return StatisticsPlan(
        request.job_id, request.digest, tuple(q.name for q in job.queries),
        tuple(q.epsilon for q in job.queries), tuple(events), total, policy.budget_delta, job.he, share,
        "customer" if policy.unit_column else "example",
    )  # fmt: skip


def _check_cost(query: QuerySpec, releases: Sequence[Release], planned: DpEvent) -> None:
    got = compose([r.event for r in releases])
    if event_to_json(got) != event_to_json(planned):
        raise PrivacyError(f"{query.name}: the release's cost differs from the plan's; nothing is sent")


def answer_statistics(
    plan: StatisticsPlan,
    request: QueryRequest,
    site: SiteConfig,
    frame: pd.DataFrame,
    *,
    source: Source,
    secret: SecretContext | None = None,
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Every statistic of the batch over ``frame`` (the site's typed table); authorized by the caller.

    Returns one JSON-ready answer per statistic and, under HE, one encrypted total per statistic.
    """
    answers: list[dict[str, Any]] = []
    sealed: list[bytes] = []
    share = None
    if plan.he:
        if secret is None:
            raise PrivacyError("statistics under HE need the federation's secret key at the site")
        share = Share(plan.share, lambda n: source.uniform(n).numpy())
    unit = site.policy.unit_column
    for q, planned in zip(request.job.queries, plan.events, strict=True):
        rows = frame if unit is None else bound_units(filtered(q, frame), unit, unit_rows(q, site), source)
        groups = grouped_rows(q, site, rows)
        if plan.he:
            assert secret is not None
            ints = []
            for rows in groups.values():
                releases = group_releases(q, site, rows, share)
                _check_cost(q, releases, planned)
                ints.append(lattice_ints(releases))
            mark = marker(secret, "statistics", request.job_id, len(sealed), site.name)
            sealed.append(encrypt_integers(secret, np.concatenate(ints), marker=mark).to_bytes())
            answers.append({"he": {"share": plan.share, "layout": _layout_dicts(q, site)}})
            continue
        out: dict[str, Any] = {}
        for label, rows in groups.items():
            releases = group_releases(q, site, rows, None)
            _check_cost(q, releases, planned)
            if _noisy_count(q, releases) < site.policy.min_cell_size:
                out[label] = {"suppressed": True}
            else:
                out[label] = {"releases": [release_to_dict(r) for r in releases]}
        answers.append({"groups": out})
    return answers, sealed


def lattice_ints(releases: Sequence[Release]) -> NDArray[np.int64]:
    """Releases as the integers on their lattices: what a site encrypts under HE."""
    values = np.concatenate([np.asarray(r.values) / r.granularity for r in releases])
    return np.asarray(np.rint(values), dtype=np.int64)


def _layout_dicts(query: QuerySpec, site: SiteConfig) -> dict[str, Any]:
    parts = [release_to_dict(r) for r in layout(query, site, he=True)]
    for p in parts:
        p["values"] = [0.0] * len(p["values"])
    return {"groups": group_labels(query, site), "parts": parts}


def decrypt_totals(
    request: QueryRequest,
    index: int,
    site: SiteConfig,
    total: bytes,
    claim: SumClaim,
    tags: Mapping[str, str],
    *,
    secret: SecretContext,
    check: SumCheck,
    authorize: Callable[[], None],
) -> dict[str, Any]:
    """Decrypt the sum of statistic ``index`` that ``claim`` names: per group, the noisy totals in
    value units, or suppressed when the decrypted noisy count is below ``min_cell_size``. Refused
    (``PolicyError``) unless the claim is the batch's, names these very bytes, and every one of its
    ``check.floor..check.ceiling`` contributors confirmed it. ``authorize`` (the guard's once-only
    release) runs after those checks and before the decryption; a sum whose values are out of range
    or whose markers do not match the contributors is decrypted but not released."""
    if not (request.job.he and 0 <= index < len(request.job.queries)):
        raise PolicyError(f"statistic {index} of {request.job_id!r} is not an encrypted sum of this batch")
    query = request.job.queries[index]
    if (claim.job_id, claim.kind, claim.round, len(claim.digests)) != (
        request.job_id, "query", 1, len(request.job.queries)
    ) or claim.digests[index] != hashlib.sha256(total).hexdigest():  # fmt: skip
        raise PolicyError(f"the sum of {query.name!r} is not the one its claim names; not decrypted")
    check_claim(claim, tags, attestor=check.attestor, floor=check.floor, ceiling=check.ceiling, who=check.who)
    encrypted = EncryptedUpdate.from_bytes(total)
    parts = layout(query, site, he=True)
    width = sum(len(r.values) for r in parts)
    labels = group_labels(query, site)
    if (encrypted.num_values, encrypted.trailer) != (width * len(labels), 1):
        raise PolicyError(
            f"the sum of {query.name!r} holds {encrypted.num_values} values, not {width * len(labels)} and "
            "a marker"
        )
    authorize()
    named = list(claim.contributors)
    ints = decrypt_integers(secret, encrypted, contributors=len(named))
    if int(ints[-1]) != marker_sum(secret, "statistics", request.job_id, index, named):
        raise PolicyError(
            f"the sum of {query.name!r} does not hold exactly one answer of each of {', '.join(named)} "
            "(its markers do not add up); nothing released"
        )
    out: dict[str, Any] = {}
    for g, label in enumerate(labels):
        row, start, values = ints[g * width : (g + 1) * width], 0, []
        for r in parts:
            values.append([float(v) * r.granularity for v in row[start : start + len(r.values)]])
            start += len(r.values)
        noisy = float(sum(values[0])) if query.stat == "histogram" else values[0][0]
        out[label] = {"suppressed": True} if noisy < site.policy.min_cell_size else {"values": values}
    return {"groups": out, "num_sites": len(named), "contributors": named}

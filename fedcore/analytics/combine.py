"""The coordinator's side of a statistic: the sites' answers combined, per group, with 95% intervals.

Without HE each site's noisy answer is also shown on its own (``per_site``); under HE only the
decrypted sum exists, and its noise is whatever the sites' shares add up to (the Polya shape in
each release: 1 when they add up to one central release). The result says which happened.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedcore.analytics.dp import Release
from fedcore.analytics.intervals import Interval, combine_histograms, combine_totals
from fedcore.analytics.moments import combine_mean, combine_sum, combine_variance
from fedcore.analytics.quantiles import combine_quantiles
from fedcore.analytics.query import QuerySpec
from fedcore.analytics.rows import bin_labels
from fedcore.analytics.vectors import compact
from fedcore.analytics.wire import release_from_dict
from fedcore.errors import AggregationError

__all__ = ["add_releases", "combine", "estimate", "noise_note"]

LEVEL = 0.95


def _items(query: QuerySpec, first: Release) -> list[str]:
    if query.stat == "histogram":
        names = bin_labels(query.bins) if query.bins else [str(c) for c in first.categories]
        return [*names, "other"]
    if query.stat == "quantile":
        return [f"p{100 * q:g}" for q in first.quantiles]
    return [query.stat]


def estimate(
    query: QuerySpec, sites: Sequence[Sequence[Release]], rng: np.random.Generator
) -> list[tuple[str, Interval]]:
    """The statistic over the union of ``sites``' rows (each a group's releases), per item."""
    if not sites:
        raise AggregationError(f"{query.name}: nothing to combine")
    part = [[rel[i] for rel in sites] for i in range(len(sites[0]))]
    stat = query.stat
    if stat == "count":
        found: Sequence[Interval] = [combine_totals(part[0], rng=rng, level=LEVEL)]
    elif stat == "sum":
        found = [combine_sum(part[1], part[0], rng=rng, level=LEVEL)]
    elif stat in ("mean", "proportion"):
        found = [combine_mean(part[1], part[0], rng=rng, level=LEVEL)]
    elif stat == "variance":
        found = [combine_variance(part[1], part[2], part[0], rng=rng, level=LEVEL)]
    elif stat == "histogram":
        found = combine_histograms(part[0], rng=rng, level=LEVEL)
    else:
        found = combine_quantiles(part[0], rng=rng, level=LEVEL)
    return list(zip(_items(query, sites[0][0]), found, strict=True))


def add_releases(per_site: Sequence[Sequence[Release]]) -> list[Release]:
    """What a decrypted HE sum holds: the sites' releases added value by value, their shapes added."""
    out = []
    for parts in zip(*per_site, strict=True):
        values = tuple(float(v) for v in np.sum([p.values for p in parts], axis=0))
        out.append(dataclasses.replace(parts[0], values=values, shape=sum(p.shape for p in parts)))
    return out


def _row(interval: Interval, **keys: Any) -> dict[str, Any]:
    return {**keys, "value": interval.estimate, "low": interval.low, "high": interval.high}


def noise_note(he: bool, shape: float | None, sites: int) -> str:
    """How the noise was made, for the result (``shape``: the decrypted sum's Polya shape)."""
    if not he:
        return f"each of {sites} sites released its own noisy answer (OpenDP); the coordinator combined them"
    if shape is not None and shape <= 1.0 + 1e-9:
        return (
            f"under HE: {sites} sites each added a share of one noise, the coordinator saw only the sum "
            "(central-DP accuracy; holds if no site shares its key with the coordinator and the count of "
            "answers in the sum is honest)"
        )
    return (
        f"under HE: {sites} sites each added noise (Polya shape {shape:g}); the coordinator saw only the sum"
    )


def combine(
    query: QuerySpec,
    answers: Mapping[str, Mapping[str, Any]],
    *,
    decrypted: Mapping[str, Any] | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """One statistic's result: ``rows`` (per group and item: value, low, high), ``per_site`` rows
    (without HE), groups suppressed by which sites, and how the noise was made. Many rows (a
    histogram of thousands of cells) are stored in column form (``fedcore.analytics.vectors``).

    ``answers`` are the sites' answers to this statistic; ``decrypted`` the decrypted HE sum.
    """
    rng = rng if rng is not None else np.random.default_rng()
    out: dict[str, Any] = {
        "name": query.name,
        "statistic": query.describe(),
        "stat": query.stat,
        "epsilon": query.epsilon,
        "sites": sorted(answers),
        "rows": [],
        "per_site": [],
    }
    if decrypted is not None:
        return _combine_he(query, answers, decrypted, rng, out)
    labels = list(dict.fromkeys(label for a in answers.values() for label in a.get("groups", {})))
    for label in labels:
        present: dict[str, list[Release]] = {}
        suppressed = []
        for site, answer in sorted(answers.items()):
            group = answer["groups"].get(label)
            if not isinstance(group, dict) or group.get("suppressed"):
                suppressed.append(site)
                continue
            present[site] = [release_from_dict(r, f"site {site!r}, {query.name}") for r in group["releases"]]
        base = {"group": label, "sites": sorted(present), "suppressed_at": suppressed}
        if not present:
            out["rows"].append({**base, "item": query.stat, "value": None, "low": None, "high": None})
            continue
        for item, interval in estimate(query, list(present.values()), rng):
            out["rows"].append(_row(interval, item=item, **base))
        for site, releases in present.items():
            for item, interval in estimate(query, [releases], rng):
                out["per_site"].append(_row(interval, site=site, group=label, item=item))
    out["noise"] = noise_note(False, None, len(answers))
    out["rows"], out["per_site"] = compact(out["rows"]), compact(out["per_site"])
    return out


def _combine_he(
    query: QuerySpec,
    answers: Mapping[str, Mapping[str, Any]],
    decrypted: Mapping[str, Any],
    rng: np.random.Generator,
    out: dict[str, Any],
) -> dict[str, Any]:
    layouts = {site: a["he"] for site, a in answers.items()}
    first = next(iter(layouts.values()))
    if any(lay["layout"] != first["layout"] for lay in layouts.values()):
        raise AggregationError(f"{query.name}: the sites' encrypted answers have different layouts")
    templates = [release_from_dict(p, f"{query.name} layout") for p in first["layout"]["parts"]]
    shape = float(sum(float(lay["share"]) for lay in layouts.values()))
    for label, group in decrypted["groups"].items():
        base = {"group": label, "sites": sorted(answers), "suppressed_at": []}
        if group.get("suppressed"):
            base["suppressed_at"] = ["(decrypted sum)"]
            out["rows"].append({**base, "item": query.stat, "value": None, "low": None, "high": None})
            continue
        releases = [
            dataclasses.replace(t, values=tuple(float(v) for v in values), shape=shape)
            for t, values in zip(templates, group["values"], strict=True)
        ]
        for item, interval in estimate(query, [releases], rng):
            out["rows"].append(_row(interval, item=item, **base))
    out["noise"] = noise_note(True, shape, len(answers))
    out["noise_shape"] = shape
    out["rows"] = compact(out["rows"])
    return out

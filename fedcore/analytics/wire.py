"""A DP release as JSON (what a site sends) and back (what the coordinator combines).

The coordinator reads a site's answer strictly: a release that is not the shape it should be is an
``AggregationError`` naming the site, never a value silently combined.
"""

from __future__ import annotations

from typing import Any

from fedcore.analytics.dp import Release, Statistic
from fedcore.errors import AggregationError, PrivacyError
from fedcore.privacy.accounting import event_from_json, event_to_json

__all__ = ["release_from_dict", "release_to_dict"]


def release_to_dict(r: Release) -> dict[str, Any]:
    return {
        "statistic": r.statistic.value,
        "values": list(r.values),
        "scale": r.scale,
        "granularity": r.granularity,
        "sensitivity": r.sensitivity,
        "epsilon": r.epsilon,
        "event": event_to_json(r.event),
        "bounds": None if r.bounds is None else list(r.bounds),
        "center": r.center,
        "categories": list(r.categories),
        "quantiles": list(r.quantiles),
        "edges": list(r.edges),
        "branching_factor": r.branching_factor,
        "shape": r.shape,
    }


def release_from_dict(raw: Any, source: str) -> Release:
    """Read a release a site sent; ``AggregationError`` (naming ``source``) if it is malformed."""
    try:
        if not isinstance(raw, dict):
            raise TypeError(f"expected an object, got {type(raw).__name__}")
        values = tuple(float(v) for v in raw["values"])
        bounds = raw["bounds"]
        return Release(
            statistic=Statistic(raw["statistic"]),
            values=values,
            scale=float(raw["scale"]),
            granularity=float(raw["granularity"]),
            sensitivity=float(raw["sensitivity"]),
            epsilon=float(raw["epsilon"]),
            event=event_from_json(raw["event"]),
            bounds=None if bounds is None else (float(bounds[0]), float(bounds[1])),
            center=float(raw["center"]),
            categories=tuple(raw["categories"]),
            quantiles=tuple(float(q) for q in raw["quantiles"]),
            edges=tuple(float(e) for e in raw["edges"]),
            branching_factor=int(raw["branching_factor"]),
            shape=float(raw["shape"]),
        )
    except (KeyError, TypeError, ValueError, IndexError, PrivacyError) as err:
        raise AggregationError(f"{source}: a malformed release ({err!r})") from err

"""What a job's ``[aggregator]`` table builds, and what the job must satisfy before round 1.

``build_aggregator(name, options)`` makes the registered rule and wraps it as the table asks:
``pre = "nnm"`` (nearest-neighbour mixing before the rule, Allouah et al. 2023) and then
``clipping = "adaptive"`` (adaptive norm clipping around both, Andrew et al. 2021). Either key is a
string, or a table with ``name`` and the wrapper's options::

    [aggregator]
    name = "trmean"
    f = 1
    pre = "nnm"                                   # NNM with the rule's own f
    clipping = { name = "adaptive", target_quantile = 0.5, initial_norm = 0.1 }

``job_problems`` states, one line each, why a job cannot run its aggregator: a Byzantine-robust
rule (``RobustAggregator``) whose ``min_updates()`` exceeds the updates a round may be aggregated
with (``min_sites``), and a rule whose step is not a function of the mean (no ``apply_mean``: every
robust rule and wrapper) under HE, where the sites apply the step from a decrypted sum, or as
client-level DP's inner aggregator, which sees only the noised mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

from fedcore.aggregators.adaptive_clipping import AdaptiveClipping
from fedcore.aggregators.base import Aggregator, MeanAggregator, RobustAggregator, make_aggregator
from fedcore.aggregators.nnm import NearestNeighborMixing
from fedcore.errors import ConfigError

__all__ = ["WRAPPER_KEYS", "ClippingName", "PreName", "build_aggregator", "job_problems"]

PreName = Literal["nnm"]
ClippingName = Literal["adaptive"]
WRAPPER_KEYS = ("pre", "clipping")
_NAMES: dict[str, tuple[str, ...]] = {"pre": get_args(PreName), "clipping": get_args(ClippingName)}


def _wrapper(key: str, value: Any) -> dict[str, Any] | None:
    """``{"name": ..., **options}`` of the ``key`` wrapper (``None`` when absent)."""
    if value is None:
        return None
    table = {"name": value} if isinstance(value, str) else value
    if not isinstance(table, Mapping) or table.get("name") not in _NAMES[key]:
        allowed = ", ".join(repr(n) for n in _NAMES[key])
        raise ConfigError(
            f"[aggregator] {key} must be {allowed} or a table with name = {allowed} and its options, "
            f"got {value!r}"
        )
    return dict(table)


def build_aggregator(name: str, options: Mapping[str, Any]) -> Aggregator:
    """The aggregator registered as ``name`` with ``options``, wrapped as ``pre`` and ``clipping`` say.

    NNM's ``f`` defaults to the rule's own ``f`` (1 for a rule without one). Raises ``ConfigError``
    for an unknown wrapper and ``TypeError``/``ConfigError`` for options a wrapper rejects.
    """
    agg = make_aggregator(name, **{k: v for k, v in options.items() if k not in WRAPPER_KEYS})
    pre = _wrapper("pre", options.get("pre"))
    if pre is not None:
        pre.pop("name")
        pre.setdefault("f", int(getattr(agg, "f", None) or 1))
        agg = NearestNeighborMixing(agg, **pre)
    clipping = _wrapper("clipping", options.get("clipping"))
    if clipping is not None:
        clipping.pop("name")
        agg = AdaptiveClipping(agg, **clipping)
    return agg


def _f(agg: Aggregator) -> str:
    f = getattr(agg, "f", None)
    return f" with f={f}" if isinstance(f, int) else ""


def job_problems(agg: Aggregator, *, name: str, min_sites: int, he: bool, client_dp: bool) -> list[str]:
    """Why a job cannot aggregate with ``agg`` (empty when it can), one line each with the fix.

    A round is aggregated once ``min_sites`` updates are valid (``sites_per_round`` is at least
    ``min_sites``), so that is the smallest round a robust rule must accept.
    """
    out = []
    if isinstance(agg, RobustAggregator) and min_sites < (need := agg.min_updates()):
        out.append(
            f"aggregator {name!r}{_f(agg)} needs at least {need} updates per round (its min_updates()) but "
            f"[job] min_sites = {min_sites} lets a round be aggregated with {min_sites}: "
            f"set [job] min_sites (and sites_per_round) >= {need}, or lower the rule's f"
        )
    if not isinstance(agg, MeanAggregator):
        if client_dp:
            out.append(
                f"aggregator {name!r} cannot be client-level DP's inner aggregator ([privacy.client_dp]): "
                "its step is not a function of the noised mean (no apply_mean); use fedavg, fedadam, "
                "fedyogi or fedadagrad"
            )
        elif he:
            out.append(
                f"aggregator {name!r} cannot run under HE: the sites open only the sum and apply the step "
                "from the mean (apply_mean), and this rule needs every update; turn [privacy.he] off or "
                "use fedavg, fedadam, fedyogi or fedadagrad"
            )
    return out

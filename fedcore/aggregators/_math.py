"""Pure aggregation math over tuples of numpy arrays: no Flower, no logging, no randomness."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcore.aggregators.base import Arrays, ClientUpdate
from fedcore.errors import AggregationError

__all__ = ["adaptive_step", "check_same_shapes", "weighted_mean"]


def check_same_shapes(updates: Sequence[ClientUpdate]) -> None:
    """Raise ``AggregationError`` if ``updates`` is empty or their tensors differ in shape."""
    if not updates:
        raise AggregationError(
            "cannot aggregate an empty list of updates: no site replied this round; "
            "check min_sites and the sites' logs"
        )
    ref = [a.shape for a in updates[0].delta]
    for u in updates[1:]:
        shapes = [a.shape for a in u.delta]
        if shapes != ref:
            raise AggregationError(
                f"update from site {u.site!r} has tensor shapes {shapes}, expected {ref} "
                f"(as sent by {updates[0].site!r}); all sites must train the same model"
            )


def weighted_mean(updates: Sequence[ClientUpdate]) -> Arrays:
    """Mean of the deltas weighted by ``num_examples`` (McMahan et al. 2017, Alg. 1).

    Sums in a fixed order sorted by (site, weight) so the result does not depend on reply order.
    """
    check_same_shapes(updates)
    ordered = sorted(updates, key=lambda u: (u.site, u.num_examples))
    total = float(sum(u.num_examples for u in ordered))
    out = [np.zeros_like(a) for a in ordered[0].delta]
    for u in ordered:
        w = u.num_examples / total
        for acc, a in zip(out, u.delta, strict=True):
            acc += w * a
    return tuple(out)


def adaptive_step(
    mean: Arrays,
    m: Arrays,
    v: Arrays,
    *,
    kind: str,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[Arrays, Arrays, Arrays]:
    """One server-optimizer step of Reddi et al. 2021, "Adaptive Federated Optimization", Alg. 2.

    ``kind`` is ``"adagrad"``, ``"adam"`` or ``"yogi"``; returns ``(step, m, v)``. The step is
    ``lr * m / (sqrt(v) + tau)`` with ``m = beta1 m + (1 - beta1) mean`` and ``v`` per ``kind``.
    """
    new_m = tuple(beta1 * mi + (1.0 - beta1) * d for mi, d in zip(m, mean, strict=True))
    sq = tuple(d * d for d in mean)
    if kind == "adagrad":
        new_v = tuple(vi + s for vi, s in zip(v, sq, strict=True))
    elif kind == "adam":
        new_v = tuple(beta2 * vi + (1.0 - beta2) * s for vi, s in zip(v, sq, strict=True))
    elif kind == "yogi":
        new_v = tuple(vi - (1.0 - beta2) * s * np.sign(vi - s) for vi, s in zip(v, sq, strict=True))
    else:
        raise ValueError(f"kind must be one of 'adagrad', 'adam', 'yogi', got {kind!r}")
    step = tuple(lr * mi / (np.sqrt(vi) + tau) for mi, vi in zip(new_m, new_v, strict=True))
    return step, new_m, new_v

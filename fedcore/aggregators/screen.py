"""The coordinator's norm screen of a round's updates, before any reaches the aggregator.

Two bounds, both optional (``[job]`` keys):

- ``max_update_norm``: an absolute L2 bound; an update above it is rejected. Honest updates shrink
  as training converges, so a bound that lets round 1's honest updates through lets a x10 attacker
  through a few rounds later (the medical job: from round 5 at 0.3).
- ``max_norm_ratio``: bounded influence relative to the round. An update whose norm exceeds
  ``ratio`` times the median norm of the round's updates (those within the absolute bound) is
  scaled down to ``ratio x median``, its direction kept (Sun et al. 2019, "Can You Really Backdoor
  Federated Learning?", Sec. 4, norm-difference clipping, with the bound taken from the round's
  median instead of a constant). The median follows the honest norms as they shrink and no
  minority of sites moves it. It clips rather than rejects: honest sites differ in norm several-fold
  (on the medical job Switzerland's update is 2.4 to 5.5 times the round's median in an honest run,
  while a x10 attacker at VA is 1.5 to 5.5 times it), so no ratio rejects the attacker and keeps
  Switzerland. It bounds what one update weighs in a mean; it does not replace a robust rule (an
  attacker may send a harmful update of honest size: sign flip, ALIE).

Pure numpy. A rejection names the site, the norm found and the bound, as ``replies.check_plain``
does for its checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from fedcore.aggregators.base import ClientUpdate

__all__ = ["Screened", "screen_norms", "update_norm"]


def update_norm(update: ClientUpdate) -> float:
    """The L2 norm of ``update.delta`` over all its tensors."""
    return float(np.sqrt(sum(float(np.sum(d * d)) for d in update.delta)))


@dataclass(frozen=True)
class Screened:
    """A round's updates after the screen: those kept (clipped ones scaled down), ``{site: reason}``
    of those rejected, ``{site: factor}`` of those clipped (``factor`` < 1 multiplied the delta), and
    the round's relative bound ``ratio x median`` (``None`` without ``max_norm_ratio``)."""

    updates: list[ClientUpdate]
    rejected: dict[str, str] = field(default_factory=dict)
    clipped: dict[str, float] = field(default_factory=dict)
    bound: float | None = None


def screen_norms(
    updates: Sequence[ClientUpdate], *, max_norm: float | None, max_ratio: float | None
) -> Screened:
    """The absolute bound first (reject), then the ratio bound against the median of what it kept (clip)."""
    kept, rejected = [], {}
    for u in updates:
        norm = update_norm(u)
        if max_norm is not None and norm > max_norm:
            rejected[u.site] = f"site {u.site!r} sent an update of L2 norm {norm:.4g} > bound {max_norm}"
        else:
            kept.append((u, norm))
    if max_ratio is None or not kept:
        return Screened([u for u, _ in kept], rejected)
    bound = max_ratio * float(np.median([norm for _, norm in kept]))
    out, clipped = [], {}
    for u, norm in kept:
        if norm > bound:
            clipped[u.site] = bound / norm
            u = replace(u, delta=tuple(d * (bound / norm) for d in u.delta))
        out.append(u)
    return Screened(out, rejected, clipped, bound)

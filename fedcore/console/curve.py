"""The spending curve's bookkeeping: which charges it draws, and what it keeps between reads.

A point of the curve is the ledger's ``epsilon`` of every charge up to one charge: exact, and costly
(a composition of all of them). So the curve draws a bounded, growth-stable subset of the charges,
composes the points a read has time for (coarse to fine), and keeps them: charges are append-only,
and a running fingerprint of them tells a kept point from one of a file restored from a backup.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from fedcore.site.ledger import ChargeRecord

__all__ = ["CURVE_POINTS", "coarse_first", "curve_grid", "fingerprints", "remember"]

K = TypeVar("K")
V = TypeVar("V")

CURVE_POINTS = 64
"""Most points a spending curve draws (beyond, a stride of charges; see ``curve_grid``)."""


def curve_grid(n: int, most: int = CURVE_POINTS) -> list[int]:
    """Which prefixes of ``n`` charges the curve draws: all while ``n <= most``; beyond, every
    ``stride``-th (a power of two, so a prefix once drawn stays drawn as charges accrue) and the last."""
    stride = 1
    while n // stride > most:
        stride *= 2
    ks = list(range(stride, n + 1, stride))
    return ks if not ks or ks[-1] == n else [*ks, n]


def coarse_first(ks: Sequence[int]) -> list[int]:
    """``ks`` in the order that spreads points evenly first: every 32nd, then every 16th, ..."""
    order = sorted(range(len(ks)), key=lambda i: -((i + 1) & -(i + 1)))  # largest power-of-two divisor
    return [ks[i] for i in order]


def fingerprints(charges: Sequence[ChargeRecord]) -> list[str]:
    """A running hash of the charges (id and event): a prefix's identity, which a restored file changes."""
    out, h = [], hashlib.sha256()
    for c in charges:
        h.update(f"{c.id}:{c.event_json}\n".encode())
        out.append(h.hexdigest())
    return out


def remember(cache: dict[K, V], key: K, value: V, most: int = 20_000) -> None:
    """Keep ``value``; a cache grown past ``most`` entries (a long-lived console) starts over."""
    if len(cache) >= most:
        cache.clear()
    cache[key] = value

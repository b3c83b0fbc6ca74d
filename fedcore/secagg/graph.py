"""Who masks with whom: the complete graph, or a Harary graph over a public permutation (Bell et al. 2020).

Up to ``complete_graph_up_to`` participants (100 by default) every pair of sites masks and every
site's secrets are shared among all others. Above, each site masks with ``degree`` neighbours: the
participants are ordered by ``SHA-256(seed || name)`` with ``seed = graph_seed(job, round,
sorted participants, degree)`` (every site recomputes it; nothing comes from the coordinator but
the list it proposed), placed on a ring, and each is joined to the ``degree / 2`` nearest on either
side (the Harary graph H(degree, n)). For a fixed site, its neighbours are then a uniformly random
``degree``-subset of the others, which is what the tail bounds below assume (see README.md).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from functools import lru_cache

from scipy.stats import hypergeom

from fedcore.errors import SecAggError
from fedcore.secagg.keys import digest

__all__ = ["graph_seed", "is_complete", "neighbours", "smallest_degree", "sparse_threshold", "tail_count"]


def is_complete(n: int, degree: int) -> bool:
    """Whether ``degree`` neighbours among ``n`` participants is the complete graph."""
    return degree == n - 1


def graph_seed(job_id: str, round_: int, participants: Sequence[str], degree: int) -> bytes:
    """The public seed of a round's graph: SHA-256 over the round's own identifiers."""
    return digest("graph", job_id, round_, degree, *sorted(participants))


def neighbours(participants: Sequence[str], *, degree: int, seed: bytes) -> dict[str, tuple[str, ...]]:
    """Each participant's neighbours (sorted): all others, or its Harary-graph neighbours."""
    names = sorted(participants)
    n = len(names)
    if is_complete(n, degree):
        return {u: tuple(v for v in names if v != u) for u in names}
    if degree % 2 or not 2 <= degree < n - 1:
        raise SecAggError(f"a sparse graph needs an even degree in 2..{n - 2}, got {degree} for {n} sites")
    ring = sorted(names, key=lambda u: hashlib.sha256(seed + u.encode()).digest())
    half = degree // 2
    out: dict[str, tuple[str, ...]] = {}
    for i, u in enumerate(ring):
        near = {ring[(i + d) % n] for d in range(-half, half + 1) if d != 0}
        out[u] = tuple(sorted(near))
    return out


@lru_cache(maxsize=4096)
def tail_count(n: int, marked: int, degree: int, bits: int) -> int:
    """The least ``c`` with ``n * P[Hyp(n - 1, marked, degree) > c] <= 2^-bits``.

    A site's ``degree`` neighbours are a uniform subset of the ``n - 1`` others; ``marked`` of those
    are corrupt (or dropped). By the union bound over the ``n`` sites, with probability at least
    ``1 - 2^-bits`` no site has more than ``c`` marked neighbours.
    """
    if marked <= 0:
        return 0
    target = 2.0**-bits / n
    for c in range(0, degree + 1):
        if hypergeom.sf(c, n - 1, min(marked, n - 1), degree) <= target:
            return c
    return degree


def sparse_threshold(
    n: int, degree: int, *, corrupt_fraction: float, min_honest: int, security_bits: int
) -> int:
    """Shamir threshold over ``degree`` holders: ``c* + min_honest - 1``, ``c*`` the corrupt tail."""
    corrupt = math.floor(corrupt_fraction * n)
    return tail_count(n, corrupt, degree, security_bits) + min_honest - 1


def smallest_degree(
    n: int,
    *,
    corrupt_fraction: float,
    dropout_fraction: float,
    min_honest: int,
    security_bits: int,
    correctness_bits: int,
) -> int:
    """The least even degree whose threshold is reachable after dropouts (else ``n - 1``: complete).

    Reachable: with probability ``1 - 2^-correctness_bits`` every site keeps at least the threshold
    of its neighbours after ``floor(dropout_fraction * n)`` random dropouts.
    """
    dropped = math.floor(dropout_fraction * n)
    for degree in range(2, n - 1, 2):
        t = sparse_threshold(
            n, degree, corrupt_fraction=corrupt_fraction, min_honest=min_honest, security_bits=security_bits
        )
        if t <= degree - tail_count(n, dropped, degree, correctness_bits):
            return degree
    return n - 1

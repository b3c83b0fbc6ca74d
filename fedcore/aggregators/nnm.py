"""Nearest-neighbour mixing, a pre-aggregation step (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot,
Stephan 2023, "Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS,
Sec. 4, Alg. 1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from fedcore.aggregators._robust import check_count, nearest, require_updates, sq_distances, stack
from fedcore.aggregators.base import AggregateResult, Aggregator, ClientUpdate, RobustAggregator
from fedcore.errors import ConfigError

__all__ = ["NearestNeighborMixing"]


class NearestNeighborMixing:
    """Replace every update by the mean of its ``n - f`` nearest updates (itself included), then
    aggregate the mixed updates with ``inner`` (Krum, a trimmed mean, a geometric median ...).

    Mixing shrinks the spread of honest updates under heterogeneous data, so the inner rule's
    error bound tightens to the optimal order (Allouah et al. 2023, Thm. 1). The mixing is
    unweighted; each mixed update keeps its site and example count, so what counts do to the step
    is ``inner``'s rule.

    Metrics: ``inner``'s.
    """

    def __init__(self, inner: Aggregator, *, f: int = 1) -> None:
        problems = check_count("f", f, low=0)
        if not isinstance(inner, Aggregator):
            problems.append(f"inner must be an aggregator (with aggregate()), got {type(inner).__name__}")
        if problems:
            raise ConfigError("nnm: " + "; ".join(problems))
        self.inner, self.f = inner, f

    def min_updates(self) -> int:
        """``2f + 1`` (a strict honest majority), or ``inner``'s minimum if larger."""
        inner = self.inner.min_updates() if isinstance(self.inner, RobustAggregator) else 1
        return max(2 * self.f + 1, inner)

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        st = stack(updates)
        n = len(st.labels)
        need, own = self.min_updates(), 2 * self.f + 1
        inner = f" and {type(self.inner).__name__}'s minimum {need}" if need > own else ""
        require_updates("nnm", n, need=need, setting=f"f={self.f}", formula=f"n >= 2f + 1{inner}")
        d = sq_distances(st.matrix)
        mixed = []
        for row, j in enumerate(st.order):
            group = [row, *nearest(d, row, n - self.f - 1)]
            mixed.append(replace(updates[j], delta=st.unflatten(st.matrix[group].mean(axis=0))))
        return self.inner.aggregate(mixed, server_round=server_round)

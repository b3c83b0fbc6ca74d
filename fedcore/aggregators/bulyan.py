"""Bulyan (El Mhamdi, Guerraoui, Rouault 2018, "The Hidden Vulnerability of Distributed Learning
in Byzantium", ICML, Sec. 4): Krum selection, then a coordinate-wise trimmed average."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedcore.aggregators._robust import (
    Matrix,
    check_count,
    krum_scores,
    require_updates,
    sq_distances,
    stack,
)
from fedcore.aggregators.base import AggregateResult, ClientUpdate
from fedcore.errors import ConfigError

__all__ = ["Bulyan"]


@dataclass(frozen=True)
class Bulyan:
    """Step per El Mhamdi et al. 2018, Alg. "Bulyan(A)" with A = Krum.

    1. Pick ``theta = n - 2f`` updates, one at a time: each is the Krum winner (with ``f``) of the
       updates not yet picked. Krum's ``n' - f - 2`` neighbours are counted on the ``n'`` left,
       with at least one, so the last picks (``n' = 2f + 1``) still have a nearest neighbour.
    2. Per coordinate, average the ``beta = theta - 2f`` picked values closest to their median.

    With ``n >= 4f + 3`` every coordinate of the step lies within the honest updates' spread, which
    closes the hole a single large coordinate leaves in Krum. Example counts are ignored
    (unweighted, as in the paper): a self-reported count must not buy a place in the selection.

    Metrics: ``bulyan_selected[<site>] = 1`` for the ``theta`` picks, ``bulyan_theta``,
    ``bulyan_beta``.
    """

    f: int = 1

    def __post_init__(self) -> None:
        problems = check_count("f", self.f, low=0)
        if problems:
            raise ConfigError("bulyan: " + "; ".join(problems))

    def min_updates(self) -> int:
        """``4f + 3`` (El Mhamdi et al. 2018, Sec. 4)."""
        return 4 * self.f + 3

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        st = stack(updates)
        n = len(st.labels)
        require_updates("bulyan", n, need=self.min_updates(), setting=f"f={self.f}", formula="n >= 4f + 3")
        picked = self._select(st.matrix, theta=n - 2 * self.f)
        step = closest_to_median_mean(st.matrix[picked], beta=n - 4 * self.f)
        metrics = {f"bulyan_selected[{st.labels[i]}]": 1.0 for i in picked}
        metrics |= {"bulyan_theta": float(n - 2 * self.f), "bulyan_beta": float(n - 4 * self.f)}
        return AggregateResult(step=st.unflatten(step), metrics=metrics)

    def _select(self, x: Matrix, *, theta: int) -> list[int]:
        """Indices of ``theta`` rows picked by repeated Krum on the rows left."""
        d = sq_distances(x)
        left, picked = list(range(x.shape[0])), list[int]()
        while len(picked) < theta:
            scores = krum_scores(d[np.ix_(left, left)], self.f)
            picked.append(left.pop(int(np.argmin(scores))))
        return picked


def closest_to_median_mean(s: Matrix, *, beta: int) -> Matrix:
    """Per column of ``s``, the mean of the ``beta`` values closest to that column's median."""
    idx = np.argsort(np.abs(s - np.median(s, axis=0)), axis=0, kind="stable")[:beta]
    result: Matrix = np.take_along_axis(s, idx, axis=0).mean(axis=0)
    return result

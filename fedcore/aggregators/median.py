"""Coordinate-wise median (Yin et al. 2018): the README's example of a researcher's aggregator."""

from collections.abc import Sequence

import numpy as np

from fedcore.aggregators._math import check_same_shapes
from fedcore.aggregators.base import AggregateResult, ClientUpdate


class CoordinateMedian:
    """Step = per-coordinate median of the deltas; robust to a minority of outlier sites.

    Weights are ignored on purpose: a median weighted by self-reported example counts would let
    one site with a large claimed count move it.
    """

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        check_same_shapes(updates)
        step = [
            np.median(np.stack([u.delta[i] for u in updates]), axis=0) for i in range(len(updates[0].delta))
        ]
        return AggregateResult(step=tuple(step))

"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML, Sec. 3, Option II)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedcore.aggregators._robust import check_count, require_updates, stack
from fedcore.aggregators.base import AggregateResult, ClientUpdate
from fedcore.errors import ConfigError

__all__ = ["TrimmedMean"]


@dataclass(frozen=True)
class TrimmedMean:
    """Per coordinate: drop the ``k`` largest and ``k`` smallest values, average the rest.

    ``k = f`` (a fixed count, ``n >= 2f + 1``) or ``k = floor(beta n)`` (a fraction, Yin et al.'s
    ``beta < 1/2``; refused while ``n`` is too small for ``k >= 1``, where it would be the plain
    mean). Give one of ``f`` and ``beta``; neither means ``f = 1``. Every surviving coordinate lies
    within the honest values' range when at most ``k`` updates are arbitrary.

    Example counts are ignored (unweighted): with self-reported counts a weighted trimmed mean
    lets one liar with a huge count own every coordinate it is not trimmed on.

    Metrics: ``trimmed_per_side`` (``k``), ``trimmed_values`` (``2 k d``) and
    ``trimmed_fraction[<site>]``, the share of that site's coordinates that were trimmed (near 1
    for an outlier site, about ``2k/n`` for a typical one).
    """

    f: int | None = None
    beta: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.f is not None and self.beta is not None:
            problems.append(f"give f or beta, not both (got f={self.f}, beta={self.beta})")
        if self.f is not None:
            problems += check_count("f", self.f, low=0)
        if self.beta is not None and not 0 < self.beta < 0.5:
            problems.append(f"beta must be in (0, 0.5), got {self.beta!r}")
        if problems:
            raise ConfigError("trimmed_mean: " + "; ".join(problems))
        if self.f is None and self.beta is None:
            object.__setattr__(self, "f", 1)

    def trim(self, n: int) -> int:
        """``k``, the values dropped at each end of every coordinate for ``n`` updates."""
        return self.f if self.f is not None else math.floor((self.beta or 0.0) * n)

    def min_updates(self) -> int:
        """``2f + 1``; with ``beta``, the least ``n`` with ``floor(beta n) >= 1``."""
        if self.f is not None:
            return 2 * self.f + 1
        n = math.ceil(1 / (self.beta or 0.5))
        return n if self.trim(n) >= 1 else n + 1

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        st = stack(updates)
        n = len(st.labels)
        if self.f is not None:
            require_updates(
                "trimmed_mean", n, need=self.min_updates(), setting=f"f={self.f}", formula="n >= 2f + 1"
            )
        else:
            require_updates(
                "trimmed_mean", n, need=self.min_updates(), setting=f"beta={self.beta}",
                formula="floor(beta n) >= 1", fix="raise beta, set f instead, or ask more sites",
            )  # fmt: skip
        k = self.trim(n)
        ranks = np.argsort(np.argsort(st.matrix, axis=0, kind="stable"), axis=0, kind="stable")
        trimmed = (ranks < k) | (ranks >= n - k)
        step = np.sort(st.matrix, axis=0)[k : n - k].mean(axis=0)
        metrics = {"trimmed_per_side": float(k), "trimmed_values": float(trimmed.sum())}
        share = trimmed.mean(axis=1) if st.matrix.shape[1] else np.zeros(n)
        metrics |= {f"trimmed_fraction[{label}]": float(s) for label, s in zip(st.labels, share, strict=True)}
        return AggregateResult(step=st.unflatten(step), metrics=metrics)

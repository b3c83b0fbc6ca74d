"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer 2017, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS, Sec. 4 and Multi-Krum in Sec. 5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedcore.aggregators._robust import check_count, krum_scores, require_updates, sq_distances, stack
from fedcore.aggregators.base import AggregateResult, ClientUpdate
from fedcore.errors import ConfigError

__all__ = ["Krum", "MultiKrum"]


@dataclass(frozen=True)
class Krum:
    """Step = the mean of the ``m`` updates with the lowest Krum scores (``m = 1``: Krum itself).

    A score is the sum of squared distances from an update to its ``n - f - 2`` nearest others;
    with at most ``f`` arbitrary updates among ``n >= 2f + 3`` the picked update is provably close
    to the honest ones (Blanchard et al. 2017, Prop. 1). Multi-Krum averages the ``m`` best
    (``m=None``: ``n - f``, the usual choice), which keeps Krum's robustness and more of the mean's
    variance reduction.

    Example counts are ignored (the selection and the average are unweighted): a count is
    self-reported and a liar with a huge count would otherwise own the average.

    Parameters
    ----------
    f
        The number of Byzantine updates tolerated per round; ``n >= max(2f + 3, f + m)``.
    m
        How many of the best-scored updates to average (``None``: ``n - f``).

    Metrics: ``krum_selected[<site>] = 1`` for every update averaged, ``krum_score[<site>]`` for all.
    """

    f: int = 1
    m: int | None = 1

    def __post_init__(self) -> None:
        problems = check_count("f", self.f, low=0)
        if self.m is not None:
            problems += check_count("m", self.m, low=1)
        if problems:
            raise ConfigError(f"{self._rule()}: " + "; ".join(problems))

    def _rule(self) -> str:
        return "krum" if self.m == 1 else "multi-krum"

    def min_updates(self) -> int:
        """``2f + 3`` (Krum's condition), or ``f + m`` when more are to be averaged."""
        return max(2 * self.f + 3, self.f + (self.m or 1))

    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        st = stack(updates)
        n = len(st.labels)
        require_updates(
            self._rule(), n, need=self.min_updates(), setting=self._setting(), formula=self._formula()
        )
        scores = krum_scores(sq_distances(st.matrix), self.f)
        chosen = np.argsort(scores, kind="stable")[: self.m or n - self.f]
        metrics = {f"krum_score[{label}]": float(s) for label, s in zip(st.labels, scores, strict=True)}
        metrics |= {f"krum_selected[{st.labels[i]}]": 1.0 for i in chosen}
        return AggregateResult(step=st.unflatten(st.matrix[chosen].mean(axis=0)), metrics=metrics)

    def _setting(self) -> str:
        return f"f={self.f}" if self.m == 1 else f"f={self.f}, m={self.m}"

    def _formula(self) -> str:
        return "n >= 2f + 3" if self.m in (1, None) else "n >= max(2f + 3, f + m)"


def MultiKrum(*, f: int = 1, m: int | None = None) -> Krum:
    """Multi-Krum: the mean of the ``m`` best-scored updates (default ``n - f``)."""
    return Krum(f=f, m=m)

"""Loss-threshold membership inference (Yeom et al. 2018), to measure what a model leaks.

The attacker guesses "member" when an example's loss is low. Its quality over all thresholds is
the ROC AUC of the score ``-loss`` (0.5: no leakage; 1.0: members perfectly separated). Yeom et
al. 2018 ("Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting", Sec. 3.2,
Def. 4, Adversary 1) use one threshold; their membership advantage is TPR - FPR at it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

__all__ = ["attack_auc", "membership_advantage"]


def _losses(values: ArrayLike | Sequence[float], name: str) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty; pass one loss per example")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has {int(np.sum(~np.isfinite(arr)))} non-finite losses")
    return arr


def attack_auc(member_losses: ArrayLike, nonmember_losses: ArrayLike) -> float:
    """AUC of the loss-threshold attack: P(loss_member < loss_nonmember) + P(tie) / 2.

    Computed by the Mann-Whitney rank formula, AUC = (R_m - n_m (n_m + 1) / 2) / (n_m n_n),
    with average ranks for ties (Hanley & McNeil 1982).
    """
    members = _losses(member_losses, "member_losses")
    nonmembers = _losses(nonmember_losses, "nonmember_losses")
    ranks = rankdata(np.concatenate([-members, -nonmembers]))  # high score = low loss
    n_m, n_n = members.size, nonmembers.size
    rank_sum = float(np.sum(ranks[:n_m]))
    return (rank_sum - n_m * (n_m + 1) / 2) / (n_m * n_n)


def membership_advantage(member_losses: ArrayLike, nonmember_losses: ArrayLike, *, threshold: float) -> float:
    """Yeom et al.'s advantage TPR - FPR of guessing "member" when ``loss <= threshold``.

    Yeom et al. set ``threshold`` to the model's average training loss.
    """
    members = _losses(member_losses, "member_losses")
    nonmembers = _losses(nonmember_losses, "nonmember_losses")
    return float(np.mean(members <= threshold) - np.mean(nonmembers <= threshold))

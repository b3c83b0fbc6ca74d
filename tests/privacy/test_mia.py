"""Loss-threshold membership inference on synthetic losses with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from fedcore.privacy.mia import attack_auc, membership_advantage


def test_perfect_separation() -> None:
    assert attack_auc([0.1, 0.2, 0.3], [1.0, 2.0]) == 1.0
    assert attack_auc([1.0, 2.0], [0.1, 0.2, 0.3]) == 0.0


def test_all_ties_is_chance() -> None:
    assert attack_auc([0.5] * 4, [0.5] * 7) == 0.5


def test_small_case_by_hand() -> None:
    # The naive pairwise count (ties count 1/2) is the oracle for the rank formula.
    members, nonmembers = [1.0, 3.0], [2.0, 0.5, 1.0]
    wins = sum((m < n) + 0.5 * (m == n) for m in members for n in nonmembers)
    assert attack_auc(members, nonmembers) == pytest.approx(wins / 6)


@pytest.mark.parametrize("shift", [0.0, 0.5, 1.5])
def test_gaussian_losses_match_closed_form(shift: float) -> None:
    # members ~ N(0, 1), non-members ~ N(shift, 1): AUC = Phi(shift / sqrt(2)).
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0, 1, 20_000), rng.normal(shift, 1, 20_000)
    # The AUC's standard error here is < 0.003; tolerance 0.01.
    assert attack_auc(members, nonmembers) == pytest.approx(norm.cdf(shift / math.sqrt(2)), abs=0.01)


def test_membership_advantage() -> None:
    members, nonmembers = np.array([0.1, 0.2, 0.9, 1.0]), np.array([0.15, 0.8, 1.2, 2.0])
    # threshold 0.5: TPR 2/4, FPR 1/4
    assert membership_advantage(members, nonmembers, threshold=0.5) == pytest.approx(0.25)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="member_losses is empty"):
        attack_auc([], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        attack_auc([1.0], [np.nan])

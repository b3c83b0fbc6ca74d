"""Calibrating noise to a target epsilon, alone or composed with a plan's other releases."""

from __future__ import annotations

import math

import dp_accounting
import pytest

from fedcore.errors import PrivacyError
from fedcore.privacy import accounting
from fedcore.privacy.accounting import PLD_DISCRETIZATION, calibrate_dpsgd_noise, calibrate_gaussian
from fedcore.privacy.calibration import smallest_noise

DELTA = 1e-5


@pytest.mark.parametrize(("power", "scale", "target"), [(1.0, 3.0, 1.0), (1.7, 40.0, 0.05), (0.6, 2.0, 9.0)])
def test_the_answer_lies_in_the_window_below_the_target(power: float, scale: float, target: float) -> None:
    calls: list[float] = []

    def spend(sigma: float) -> float:
        calls.append(sigma)
        return scale / sigma**power

    sigma = smallest_noise(spend, target=target, rtol=1e-3)
    assert target * (1 - 1e-3) <= spend(sigma) <= target
    assert sigma in calls[:-1] and len(calls) <= 12  # a measured noise, found in a few steps


def test_a_target_out_of_reach_raises() -> None:
    with pytest.raises(PrivacyError, match="no noise multiplier <= 100"):
        smallest_noise(lambda s: 1.0 + 1.0 / s, target=0.5, bounds=(1e-3, 100.0))
    with pytest.raises(PrivacyError, match=r"met even with noise multiplier 0\.1"):
        smallest_noise(lambda s: 1.0 / s, target=50.0, bounds=(0.1, 1e6))


def _oracle(*events: dp_accounting.DpEvent) -> float:
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    for event in events:
        acc.compose(event)
    return float(acc.get_epsilon(DELTA))


def test_dpsgd_calibrated_beside_other_releases_composes_to_the_target() -> None:
    size = dp_accounting.GaussianDpEvent(10.0)
    alone = calibrate_dpsgd_noise(target_epsilon=1.0, delta=DELTA, sample_rate=0.02, steps=300)
    shared = calibrate_dpsgd_noise(
        target_epsilon=1.0, delta=DELTA, sample_rate=0.02, steps=300, others=[size]
    )
    step = dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(shared))
    total = _oracle(size, dp_accounting.SelfComposedDpEvent(step, 300))
    assert 1.0 * (1 - 2e-3) <= total <= 1.0 and shared > alone  # more noise: it shares the target


def test_gaussian_calibrated_beside_other_releases_composes_to_the_target() -> None:
    other = dp_accounting.LaplaceDpEvent(4.0)
    z = calibrate_gaussian(target_epsilon=0.8, delta=DELTA, count=5, others=[other])
    total = _oracle(other, dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), 5))
    assert 0.8 * (1 - 2e-3) <= total <= 0.8


def test_other_releases_that_reach_the_target_leave_nothing_to_calibrate() -> None:
    with pytest.raises(PrivacyError, match=r"other releases alone spend epsilon 0\.\d+ >= the target 0\.2"):
        calibrate_dpsgd_noise(
            target_epsilon=0.2,
            delta=DELTA,
            sample_rate=0.02,
            steps=300,
            others=[dp_accounting.GaussianDpEvent(10.0)],
        )


def test_the_medical_calibration_takes_a_handful_of_accountant_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan is built at admission on every site: the search must not call the accountant 15-20
    times as a bracket-and-Brent search from scratch does (about 40-120 ms per call here)."""
    seen: list[str] = []
    real = accounting._composed_epsilon.__wrapped__

    def counted(text: str, delta: float, accountant: accounting.AccountantName) -> float:
        seen.append(text)
        return real(text, delta, accountant)

    monkeypatch.setattr(accounting, "_composed_epsilon", counted)
    sigma = calibrate_dpsgd_noise(
        target_epsilon=1.0,
        delta=DELTA,
        sample_rate=4 / 190,
        steps=1500,
        others=[accounting.gaussian_event(noise_multiplier=10.0)],
    )
    assert math.isfinite(sigma) and len(seen) <= 7

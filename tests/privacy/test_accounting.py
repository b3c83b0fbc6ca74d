"""Accounting against dp_accounting's own golden values; calibration round-trips; serializer."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting import dp_event, pld, rdp

from fedcore.errors import PrivacyError
from fedcore.privacy.accounting import (
    PLD_DISCRETIZATION,
    calibrate_dpsgd_noise,
    dpsgd_event,
    epsilon,
    event_from_json,
    event_to_json,
    gaussian_event,
    laplace_event,
)

DELTA = 1e-5


def _golden_pld(event: dp_event.DpEvent, discretization: float = PLD_DISCRETIZATION) -> float:
    acc = pld.PLDAccountant(value_discretization_interval=discretization)
    return float(acc.compose(event).get_epsilon(DELTA))


def _golden_rdp(event: dp_event.DpEvent) -> float:
    return float(rdp.RdpAccountant().compose(event).get_epsilon(DELTA))


def test_dpsgd_event_structure() -> None:
    event = dpsgd_event(noise_multiplier=1.1, sample_rate=0.01, steps=300)
    assert event == dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(0.01, dp_event.GaussianDpEvent(1.1)), 300
    )


@pytest.mark.parametrize("sigma", [0.8, 1.5])
def test_dpsgd_epsilon_matches_dp_accounting(sigma: float) -> None:
    event = dpsgd_event(noise_multiplier=sigma, sample_rate=0.02, steps=200)
    assert epsilon([event], delta=DELTA) == pytest.approx(_golden_pld(event), rel=1e-9)
    assert epsilon([event], delta=DELTA, accountant="rdp") == pytest.approx(_golden_rdp(event), rel=1e-9)
    # The coarser discretization stays within 0.5% of the library default (1e-4).
    assert epsilon([event], delta=DELTA) == pytest.approx(_golden_pld(event, 1e-4), rel=5e-3)


def test_composition_matches_composed_event_not_sum() -> None:
    events = [gaussian_event(noise_multiplier=4.0), gaussian_event(noise_multiplier=4.0, count=3)]
    golden = _golden_pld(dp_event.ComposedDpEvent([dp_event.GaussianDpEvent(4.0)] * 4))
    eps = epsilon(events, delta=DELTA)
    assert eps == pytest.approx(golden, rel=1e-6)
    assert eps < sum(epsilon([e], delta=DELTA) for e in events)


def test_empty_events_spend_nothing() -> None:
    assert epsilon([], delta=DELTA) == 0.0


def test_bad_arguments_report_all_problems() -> None:
    with pytest.raises(PrivacyError, match=r"noise_multiplier.*sample_rate.*steps"):
        dpsgd_event(noise_multiplier=-1.0, sample_rate=2.0, steps=0)
    with pytest.raises(PrivacyError, match="delta"):
        epsilon([gaussian_event(noise_multiplier=1.0)], delta=0.0)
    with pytest.raises(PrivacyError, match="allowed: pld, rdp"):
        epsilon([gaussian_event(noise_multiplier=1.0)], delta=DELTA, accountant="xyz")  # type: ignore[arg-type]


def test_unknown_event_raises_never_passes() -> None:
    weird = dp_event.UnsupportedDpEvent()
    with pytest.raises(PrivacyError, match="cannot serialize UnsupportedDpEvent"):
        epsilon([weird], delta=DELTA)
    with pytest.raises(PrivacyError, match="cannot serialize"):
        event_to_json(dp_event.ComposedDpEvent([dp_event.NonPrivateDpEvent()]))


@pytest.mark.parametrize("target", [1.0, 4.0])
def test_calibration_round_trip(target: float) -> None:
    kwargs = {"delta": DELTA, "sample_rate": 0.02, "steps": 150}
    sigma = calibrate_dpsgd_noise(target_epsilon=target, **kwargs)  # type: ignore[arg-type]
    event = dpsgd_event(noise_multiplier=sigma, sample_rate=0.02, steps=150)
    achieved = _golden_pld(event)
    assert 0.99 * target <= achieved <= target


def test_calibration_rdp() -> None:
    sigma = calibrate_dpsgd_noise(
        target_epsilon=2.0, delta=DELTA, sample_rate=0.05, steps=100, accountant="rdp"
    )
    achieved = _golden_rdp(dpsgd_event(noise_multiplier=sigma, sample_rate=0.05, steps=100))
    assert 0.99 * 2.0 <= achieved <= 2.0


def test_calibration_uses_steps_actually_run() -> None:
    one_epoch = calibrate_dpsgd_noise(target_epsilon=2.0, delta=DELTA, sample_rate=0.05, steps=20)
    ten_rounds = calibrate_dpsgd_noise(target_epsilon=2.0, delta=DELTA, sample_rate=0.05, steps=200)
    assert ten_rounds > one_epoch


@pytest.mark.parametrize(
    "event",
    [
        dpsgd_event(noise_multiplier=1.3, sample_rate=0.004, steps=1000),
        gaussian_event(noise_multiplier=0.7, count=5),
        laplace_event(noise_multiplier=2.0),
        dp_event.ComposedDpEvent(
            [
                dp_event.NoOpDpEvent(),
                dp_event.GaussianDpEvent(1.0),
                laplace_event(noise_multiplier=1),
            ]
        ),
    ],
)
def test_json_round_trip(event: dp_accounting.DpEvent) -> None:
    text = event_to_json(event)
    assert event_from_json(text) == event
    assert event_to_json(event_from_json(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"type": "gaussian"}',
        '{"type": "gaussian", "noise_multiplier": "1"}',
        '{"type": "gaussian", "noise_multiplier": 1, "extra": 2}',
        '{"type": "self_composed", "count": 1.5, "event": {"type": "no_op"}}',
        '{"type": "dp_accounting.dp_event.NonPrivateDpEvent"}',
        '{"type": "composed", "events": {"type": "no_op"}}',
        "[1, 2]",
    ],
)
def test_malformed_json_raises(text: str) -> None:
    with pytest.raises(PrivacyError):
        event_from_json(text)


def test_zcdp_event_composes_everything_by_rdp_never_less() -> None:
    """A secure-aggregation round (zCDP) with a DP-SGD job on one ledger: the whole composition is
    RDP's (dp_accounting's RdpAccountant on the same events), which is at least PLD's for the rest."""
    from fedcore.privacy.accounting import accountant_for

    sgd = dpsgd_event(noise_multiplier=1.1, sample_rate=0.01, steps=300)
    zc = dp_event.ZCDpEvent(rho=0.01, xi=0.0)
    both = [sgd, dp_event.SelfComposedDpEvent(zc, 10)]
    assert accountant_for(both, "pld") == "rdp" and accountant_for([sgd], "pld") == "pld"
    golden = _golden_rdp(dp_event.ComposedDpEvent([sgd, dp_event.SelfComposedDpEvent(zc, 10)]))
    assert epsilon(both, delta=DELTA) == pytest.approx(golden, rel=1e-9)
    assert epsilon(both, delta=DELTA) > epsilon([sgd], delta=DELTA)  # the zCDP rounds cost something
    assert epsilon(both, delta=DELTA) >= epsilon([sgd], delta=DELTA, accountant="rdp")

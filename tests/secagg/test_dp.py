"""Distributed-noise accounting: against the reference code's own numbers, and sound as a ledger event.

Golden values: google-research/federated, ``distributed_dp/accounting_utils.py`` at commit
a5af8c4433c9ee2d2b1565f1bcc68c89e2000a6b, run unchanged with q = 1, ``rounding=False`` and an
explicit ``l1_sens``; its ``tensorflow_privacy.get_privacy_spent`` was supplied by the same RDP to
(epsilon, delta) conversion that ``dp_accounting.rdp.compute_epsilon`` holds (tensorflow was not
installed). The reference's units are floats with ``scale = 1 / gamma``; ours are lattice units:
stddev and sensitivities times the scale, and a Skellam variance of (central stddev x scale)^2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event, rdp

from fedcore.errors import PrivacyError
from fedcore.privacy.accounting import epsilon, event_from_json, event_to_json
from fedcore.secagg.dp import (
    RDP_ORDERS,
    DistributedNoise,
    Mechanism,
    Trust,
    lattice_sensitivity,
    noise_rdp,
    round_event,
    site_epsilon,
)

DDG, SK = Mechanism.DISCRETE_GAUSSIAN, Mechanism.SKELLAM

# (gamma, local_stddev, num_clients, l2_sens, l1_sens, dim, steps, delta) -> ddgauss_epsilon
DDG_GOLDEN = [
    ((0.5, 2.0, 10, 1.0, 30.0, 1000, 1, 1e-5), 0.6158015412081491),
    ((0.5, 0.3, 10, 1.0, 30.0, 1000, 1, 1e-5), 360.8907407908683),  # tau matters: sigma 0.6 lattice units
    ((1.0, 1.2, 1, 5.0, 100.0, 500, 10, 1e-6), 186.04032730795552),
    ((0.25, 0.3, 100, 2.0, 40.0, 4000, 50, 1e-5), 32.357920023339176),
    ((0.001, 0.01, 20, 1.0, 50.0, 100000, 100, 1e-5), 50010.126631103856),
    ((0.01, 1.0, 10, 1.0, 31.6, 1000, 100, 1e-5), 19.801691480042898),
]
# (scale, central_stddev, l2_sens, l1_sens, dim, steps, delta) -> skellam_epsilon
SKELLAM_GOLDEN = [
    ((2.0, 3.0, 1.0, 30.0, 1000, 1, 1e-5), 1.4765528245829853),
    ((10.0, 1.0, 1.0, 10.0, 1000, 20, 1e-5), 30.57663110385034),
    ((1.0, 50.0, 20.0, 400.0, 400, 100, 1e-6), 28.443616196844385),
    ((100.0, 0.5, 0.5, 20.0, 10000, 5, 1e-5), 12.306591480042893),
    ((100.0, 3.0, 1.0, 31.6, 1000, 100, 1e-5), 21.23789332607256),
]


def _ddg_eps(case: tuple[float, ...], trust_n: int | None = None) -> float:
    gamma, sd, n, l2, l1, dim, steps, delta = case
    s = 1.0 / gamma
    noise = DistributedNoise(DDG, sd * s)
    trust = Trust.OWN if n == 1 else Trust.THRESHOLD
    return site_epsilon(
        noise,
        l2_sensitivity=l2 * s,
        l1_sensitivity=l1 * s,
        dim=int(dim),
        trust=trust,
        min_honest=int(n),
        rounds=int(steps),
        delta=delta,
    )


@pytest.mark.parametrize(("case", "golden"), DDG_GOLDEN)
def test_distributed_discrete_gaussian_matches_reference(case: tuple[float, ...], golden: float) -> None:
    assert _ddg_eps(case) == pytest.approx(golden, rel=1e-9)


@pytest.mark.parametrize(("case", "golden"), SKELLAM_GOLDEN)
def test_distributed_skellam_matches_reference(case: tuple[float, ...], golden: float) -> None:
    s, central, l2, l1, dim, steps, delta = case
    n = 4  # split the central variance over 4 sites: the accounting only sees the sum
    noise = DistributedNoise(SK, (central * s) ** 2 / n)
    eps = site_epsilon(
        noise,
        l2_sensitivity=l2 * s,
        l1_sensitivity=l1 * s,
        dim=int(dim),
        trust=Trust.THRESHOLD,
        min_honest=n,
        rounds=int(steps),
        delta=delta,
    )
    assert eps == pytest.approx(golden, rel=1e-9)


def test_rdp_curves_match_reference_orders() -> None:
    # reference: compute_rdp_dgaussian(1, l1_scale=30/(sqrt(10) 4), l2_scale=2/(sqrt(10) 4),
    # tau=.01, 1000, 1, o)
    # is min(term1, term2, term3); our sigma=4, n=10 gives tau ~ 1e-136, so compare the tau-free part
    got = noise_rdp(
        DistributedNoise(DDG, 4.0),
        l2_sensitivity=2.0,
        l1_sensitivity=30.0,
        dim=1000,
        sites=10,
        orders=(2, 8, 32, 128),
    )
    np.testing.assert_allclose(
        got, np.array([2, 8, 32, 128]) / 2 * (2.0 / (math.sqrt(10) * 4.0)) ** 2, rtol=1e-12
    )
    # reference: _skellam_rdp(l1=30, l2=1, central_var=9, scale=2, order) at orders 2, 8, 32, 128
    sk = noise_rdp(
        DistributedNoise(SK, 36.0),
        l2_sensitivity=2.0,
        l1_sensitivity=60.0,
        dim=1000,
        sites=1,
        orders=(2, 8, 32, 128),
    )
    np.testing.assert_allclose(
        sk, [0.18287037037037035, 0.5254629629629629, 1.8958333333333333, 7.377314814814815], rtol=1e-12
    )


@pytest.mark.parametrize("mech,scale", [(DDG, 30.0), (DDG, 0.7), (SK, 900.0), (SK, 2.0)])
def test_ledger_event_is_sound_and_tight(mech: Mechanism, scale: float) -> None:
    noise = DistributedNoise(mech, scale)
    l2, l1 = lattice_sensitivity(l2_norm=1.0, scale=20.0, dim=100)
    kw = {"l2_sensitivity": l2, "l1_sensitivity": l1, "dim": 100, "trust": Trust.THRESHOLD, "min_honest": 5}
    exact = site_epsilon(noise, **kw, rounds=50, delta=1e-5)  # type: ignore[arg-type]
    event = round_event(noise, **kw, planned_rounds=50, delta=1e-5)  # type: ignore[arg-type]
    curve = noise_rdp(noise, l2_sensitivity=l2, l1_sensitivity=l1, dim=100, sites=5)
    orders = np.array(RDP_ORDERS, dtype=float)
    assert np.all(event.xi + event.rho * orders >= curve * (1 - 1e-12))  # sound: above the RDP at every order
    charged = epsilon([event] * 50, delta=1e-5, accountant="rdp")  # what the ledger composes
    assert charged <= exact * 1.05  # and tight (dp_accounting's fractional orders may even beat ours)
    assert event_from_json(event_to_json(event)) == event


def test_pld_ledger_composes_the_event_by_rdp_rather_than_skipping_it() -> None:
    event = round_event(
        DistributedNoise(DDG, 30.0),
        l2_sensitivity=25.0,
        l1_sensitivity=250.0,
        dim=100,
        trust=Trust.OWN,
        planned_rounds=1,
        delta=1e-5,
    )
    by_rdp = float(rdp.RdpAccountant().compose(event).get_epsilon(1e-5))
    assert by_rdp > 0 and epsilon([event], delta=1e-5, accountant="pld") == pytest.approx(by_rdp, rel=1e-9)


def test_trusting_the_threshold_charges_less_than_own_noise_only() -> None:
    noise = DistributedNoise(DDG, 150.0)
    kw = {"l2_sensitivity": 100.0, "l1_sensitivity": 1000.0, "dim": 100, "rounds": 10, "delta": 1e-5}
    own = site_epsilon(noise, trust=Trust.OWN, **kw)  # type: ignore[arg-type]
    shared = site_epsilon(noise, trust=Trust.THRESHOLD, min_honest=9, **kw)  # type: ignore[arg-type]
    # one site's own discrete Gaussian has the continuous Gaussian's RDP (tau = 0; CKS 2020)
    acc = rdp.RdpAccountant(orders=RDP_ORDERS).compose(dp_event.GaussianDpEvent(150.0 / 100.0), 10)
    assert own == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert shared < own / 2.5  # 9 sites' noise: 3x the stddev


def test_bad_parameters_raise() -> None:
    with pytest.raises(PrivacyError, match="noise scale"):
        DistributedNoise(DDG, 0.0)
    with pytest.raises(PrivacyError, match="mechanism"):
        DistributedNoise("gauss", 1.0)  # type: ignore[arg-type]
    with pytest.raises(PrivacyError, match="delta"):
        site_epsilon(
            DistributedNoise(SK, 4.0),
            l2_sensitivity=1,
            l1_sensitivity=1,
            dim=1,
            trust=Trust.OWN,
            rounds=1,
            delta=0,
        )

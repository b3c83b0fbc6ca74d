"""Client-level DP: contract properties, clipping bound, calibrated noise (statistical), events."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from dp_accounting import dp_event

from fedcore.aggregators.base import AggregateResult, Arrays, ClientUpdate
from fedcore.aggregators.fedavg import FedAvg
from fedcore.errors import ConfigError, UpdateError
from fedcore.privacy.accounting import epsilon
from fedcore.privacy.client_dp import ClientLevelDP, clip_and_add_noise_share
from fedcore.privacy.noise import l2_norm
from fedcore.privacy.rng import Source
from fedcore.testing import AggregatorContract

N = 200_000
# Sample std of N normal draws: relative standard error 1/sqrt(2N) = 0.16%; 2% is > 10 sigma.
STD_TOL = 0.02
TINY = 1e-13  # noise so small the contract's 1e-9 tolerances hold, while the code path is real


def _rng(seed: int = 0) -> Source:
    return Source(secure=False, seed=seed)  # reproducible test noise (seeded_source would warn)


def _zeros(n: int, size: int = N) -> list[ClientUpdate]:
    return [ClientUpdate(delta=(np.zeros(size),), num_examples=k + 1) for k in range(n)]


class _NoMean:
    def aggregate(self, updates: Sequence[ClientUpdate], *, server_round: int) -> AggregateResult:
        return AggregateResult(step=updates[0].delta)


class TestCentralContract(AggregatorContract):
    uses_weights = False  # uniform weights under DP, by design

    def make(self) -> ClientLevelDP:
        return ClientLevelDP(
            FedAvg(), clipping_norm=100.0, noise_multiplier=TINY, mode="central", source=_rng()
        )

    def test_zero_updates_are_a_fixed_point(self) -> None:
        # Central DP must add noise even to zero updates: a fixed point up to the (tiny) noise.
        res = self.make().aggregate(_zeros(3, size=6), server_round=1)
        assert np.allclose(res.step[0], 0.0, atol=1e-9, rtol=0)


class TestAdaptiveContract(TestCentralContract):
    def make(self) -> ClientLevelDP:
        return ClientLevelDP(
            FedAvg(), clipping_norm=100.0, noise_multiplier=TINY, mode="central",
            clipping="adaptive", source=_rng(),
        )  # fmt: skip


class TestDistributedContract(TestCentralContract):
    def make(self) -> ClientLevelDP:
        return ClientLevelDP(
            FedAvg(), clipping_norm=100.0, noise_multiplier=TINY, mode="distributed",
            num_sites=5, source=_rng(),
        )  # fmt: skip


def test_clipping_bound_respected_and_uniform_weights() -> None:
    big = (np.full(4, 10.0),)  # norm 20
    ups = [ClientUpdate(delta=big, num_examples=1), ClientUpdate(delta=big, num_examples=99)]
    dp = ClientLevelDP(FedAvg(), clipping_norm=1.0, noise_multiplier=TINY, mode="central", source=_rng())
    step = dp.aggregate(ups, server_round=1).step
    assert l2_norm(step) == pytest.approx(1.0)
    mixed = [
        ClientUpdate(delta=big, num_examples=1),
        ClientUpdate(delta=(np.zeros(4),), num_examples=99),
    ]
    assert l2_norm(dp.aggregate(mixed, server_round=1).step) == pytest.approx(0.5)


@pytest.mark.parametrize(("n", "c", "z"), [(4, 2.0, 1.5), (10, 0.5, 0.8)])
def test_central_noise_has_calibrated_std(n: int, c: float, z: float) -> None:
    dp = ClientLevelDP(FedAvg(), clipping_norm=c, noise_multiplier=z, mode="central", source=_rng(1))
    result = dp.aggregate(_zeros(n), server_round=1)
    noise = result.step[0]
    assert abs(noise.std() / (z * c / n) - 1) < STD_TOL
    assert abs(noise.mean()) < 5 * (z * c / n) / math.sqrt(N)
    assert result.dp_events == (dp_event.GaussianDpEvent(z),)


def test_fixed_denominator() -> None:
    dp = ClientLevelDP(
        FedAvg(), clipping_norm=1.0, noise_multiplier=1.0, mode="central", source=_rng(2),
        expected_clients=20,
    )  # fmt: skip
    noise = dp.aggregate(_zeros(5), server_round=1).step[0]
    assert abs(noise.std() / (1.0 / 20) - 1) < STD_TOL


def test_distributed_shares_sum_to_full_std() -> None:
    k, c, z = 5, 1.5, 1.2
    src = _rng(3)
    shares = [
        clip_and_add_noise_share((np.zeros(N),), clipping_norm=c, noise_multiplier=z, num_sites=k, source=src)
        for _ in range(k)
    ]
    assert abs(shares[0][0].std() / (z * c / math.sqrt(k)) - 1) < STD_TOL
    ups = [ClientUpdate(delta=s, num_examples=1, site=f"s{i}") for i, s in enumerate(shares)]
    dp = ClientLevelDP(
        FedAvg(), clipping_norm=c, noise_multiplier=z, mode="distributed", num_sites=k, source=_rng()
    )
    result = dp.aggregate(ups, server_round=1)
    total = result.step[0] * k
    assert abs(total.std() / (z * c) - 1) < STD_TOL
    assert result.dp_events == (dp_event.GaussianDpEvent(z),)


def test_distributed_share_clips() -> None:
    delta = (np.full(3, 100.0), np.full(2, -100.0))
    out = clip_and_add_noise_share(
        delta, clipping_norm=1.0, noise_multiplier=TINY, num_sites=3, source=_rng()
    )
    assert l2_norm(out) == pytest.approx(1.0)
    assert delta[0][0] == 100.0  # input untouched


def test_distributed_dropout_weakens_event_honestly() -> None:
    dp = ClientLevelDP(
        FedAvg(),
        clipping_norm=1.0,
        noise_multiplier=2.0,
        mode="distributed",
        num_sites=8,
        source=_rng(),
    )
    result = dp.aggregate(_zeros(2, size=10), server_round=1)
    assert result.dp_events == (dp_event.GaussianDpEvent(1.0),)  # 2 * sqrt(2/8)
    mean: Arrays = (np.zeros(3),)
    assert dp.apply_mean(mean, server_round=1).dp_events == (dp_event.GaussianDpEvent(2.0),)
    assert dp.apply_mean(mean, server_round=1, num_updates=2).dp_events[0].noise_multiplier == 1.0


def test_distributed_rejects_unclipped_update() -> None:
    dp = ClientLevelDP(
        FedAvg(),
        clipping_norm=1.0,
        noise_multiplier=0.5,
        mode="distributed",
        num_sites=4,
        source=_rng(),
    )
    bad = [ClientUpdate(delta=(np.full(100, 50.0),), num_examples=1, site="rogue")]
    with pytest.raises(UpdateError, match=r"site 'rogue'.*noise headroom"):
        dp.aggregate(bad, server_round=1)


def test_central_apply_mean_refuses() -> None:
    dp = ClientLevelDP(FedAvg(), clipping_norm=1.0, noise_multiplier=1.0, mode="central", source=_rng())
    with pytest.raises(ConfigError, match="mode='distributed'"):
        dp.apply_mean((np.zeros(2),), server_round=1)


def test_adaptive_event_accounts_to_requested_noise() -> None:
    z = 1.0
    dp = ClientLevelDP(
        FedAvg(), clipping_norm=1.0, noise_multiplier=z, mode="central", clipping="adaptive",
        source=_rng(), count_noise_std=2.0,
    )  # fmt: skip
    (event,) = dp.aggregate(_zeros(50, size=10), server_round=1).dp_events
    assert isinstance(event, dp_event.ComposedDpEvent)
    z_delta = event.events[0].noise_multiplier
    assert z_delta > z and event.events[1] == dp_event.GaussianDpEvent(4.0)
    exact = epsilon([dp_event.GaussianDpEvent(z)], delta=1e-5)
    assert epsilon([event], delta=1e-5) == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize(("scale", "direction"), [(0.01, -1), (100.0, +1)])
def test_adaptive_clipping_moves_geometrically(scale: float, direction: int) -> None:
    n, lr = 200, 0.2
    rng = np.random.default_rng(5)
    ups = [ClientUpdate(delta=(rng.normal(size=8) * scale,), num_examples=1) for _ in range(n)]
    dp = ClientLevelDP(
        FedAvg(), clipping_norm=1.0, noise_multiplier=1.0, mode="central", clipping="adaptive",
        source=_rng(), clip_lr=lr,
    )  # fmt: skip
    dp.aggregate(ups, server_round=1)
    unclipped = 1.0 if direction < 0 else 0.0
    expected = math.exp(-lr * (unclipped - 0.5))
    # sigma_b / n = 0.05 on the fraction -> <= 0.2 * 0.25 in the exponent at 5 sigma.
    assert dp.clipping_norm == pytest.approx(expected, rel=0.06)
    assert (dp.clipping_norm - 1.0) * direction > 0


def test_construction_reports_all_problems() -> None:
    with pytest.raises(ConfigError) as info:
        ClientLevelDP(
            _NoMean(),  # type: ignore[arg-type]
            clipping_norm=-1.0, noise_multiplier=0.0, mode="local", clipping="auto",  # type: ignore[arg-type]
            source=_rng(), target_quantile=1.5, clip_lr=0.0,
        )  # fmt: skip
    msg = str(info.value)
    for part in ("apply_mean", "clipping_norm", "noise_multiplier", "central, distributed",
                 "fixed, adaptive", "target_quantile", "clip_lr"):  # fmt: skip
        assert part in msg
    with pytest.raises(ConfigError, match="num_sites"):
        ClientLevelDP(FedAvg(), clipping_norm=1.0, noise_multiplier=1.0, mode="distributed", source=_rng())
    with pytest.raises(ConfigError, match="2 \\* count_noise_std"):
        ClientLevelDP(
            FedAvg(), clipping_norm=1.0, noise_multiplier=3.0, mode="central", clipping="adaptive",
            source=_rng(), count_noise_std=1.0,
        )  # fmt: skip

"""A job's fixed point and noise: one derivation for every party; clipping explicit, sums never wrap."""

from __future__ import annotations

import numpy as np
import pytest

from fedcore.config.secagg import SecAggSpec
from fedcore.errors import ConfigError, UpdateError
from fedcore.privacy.rng import Source
from fedcore.secagg.job import encoder


def seeded_source(seed: int) -> Source:
    return Source(secure=False, seed=seed)  # reproducible test noise (fedcore's seeded_source warns)


def test_weighted_sum_decodes_to_the_weighted_mean_within_the_rounding_bound() -> None:
    spec = SecAggSpec(clipping_norm=10.0, weight="examples", max_weight=1000)
    enc = encoder(spec, 4)
    rng = np.random.default_rng(0)
    deltas = [rng.normal(size=50) * 0.1 for _ in range(4)]
    weights = [120.0, 300.0, 45.0, 999.0]
    source = seeded_source(1)
    total = sum(enc.words(enc.encode(d, w, source)) for d, w in zip(deltas, weights, strict=True))
    summed, weight = enc.decode(np.asarray(total, dtype=np.uint32), survivors=4)
    expect = sum(w * d for w, d in zip(weights, deltas, strict=True))
    assert weight == pytest.approx(sum(weights), abs=4 / (2 * enc.point.scale))
    assert np.max(np.abs(summed - expect)) <= 4 / (2 * enc.point.scale)


def test_clipping_is_explicit_and_an_overweight_site_is_an_error() -> None:
    enc = encoder(SecAggSpec(clipping_norm=1.0, weight="uniform"), 3)
    big = np.full(100, 5.0)
    ints = enc.encode(big, 1.0, seeded_source(0))
    assert np.linalg.norm(ints / enc.point.scale) <= 1.0 + 100 / enc.point.scale  # clipped to the L2 ball
    heavy = encoder(SecAggSpec(clipping_norm=1.0, max_weight=10), 3)
    with pytest.raises(UpdateError, match="max_weight"):
        heavy.encode(np.zeros(3), 11.0, seeded_source(0))


def test_a_modulus_too_small_for_the_sites_is_refused() -> None:
    with pytest.raises(ConfigError, match="raise modulus_bits"):
        encoder(SecAggSpec(clipping_norm=10.0, modulus_bits=16, max_weight=100_000), 100)


def test_each_site_adds_its_share_of_the_noise() -> None:
    """Four sites' ddgauss noise sums to std z C (float units): measured within 5% over 200k draws."""
    spec = SecAggSpec(clipping_norm=2.0, weight="uniform", noise="ddgauss", noise_multiplier=1.5)
    enc = encoder(spec, 4)
    zeros = np.zeros(200_000)
    total = sum(enc.encode(zeros, 1.0, seeded_source(k)) for k in range(4))
    assert np.std(total / enc.point.scale) == pytest.approx(1.5 * 2.0, rel=0.05)

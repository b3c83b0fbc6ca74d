"""Fixed point: no silent saturation, and sums that cannot wrap by construction."""

from __future__ import annotations

import numpy as np
import pytest

from fedcore.errors import ConfigError, SecAggError, UpdateError
from fedcore.secagg import FixedPoint


def test_value_outside_the_bound_raises() -> None:
    fp = FixedPoint(scale=100.0, bound=1.0)
    with pytest.raises(
        UpdateError, match=r"1 value\(s\) outside \[-1.0, 1.0\] \(first: index 2, value 1.5\)"
    ):
        fp.encode([0.0, 1.0, 1.5])
    with pytest.raises(UpdateError, match="outside"):
        fp.encode([float("nan")])
    assert fp.encode([-1.0, 1.0]).tolist() == [-100, 100]  # the bound itself is allowed


def test_sum_that_could_wrap_is_refused_at_configuration() -> None:
    fp = FixedPoint(scale=2.0**20, bound=8.0, modulus_bits=32)  # capacity 2^23: 2^31 / 2^23 = 256 sites max
    fp.check_sites(255)
    with pytest.raises(ConfigError, match=r"256 sites x capacity 8388608.*could wrap"):
        fp.check_sites(256)
    with pytest.raises(ConfigError, match="could wrap"):
        fp.to_words(np.zeros(3, dtype=np.int64), max_sites=1000)


def test_noise_beyond_the_slack_raises() -> None:
    fp = FixedPoint(scale=10.0, bound=1.0, noise_slack=5)
    fp.to_words(np.array([15, -15]), max_sites=3)
    with pytest.raises(UpdateError, match="magnitude 16 exceeds the capacity 15"):
        fp.to_words(np.array([16]), max_sites=3)


@pytest.mark.parametrize("bits", [24, 32, 50])
def test_negative_values_round_trip_through_words(bits: int) -> None:
    fp = FixedPoint(scale=1000.0, bound=2.0, modulus_bits=bits)
    x = np.array([-2.0, -0.0014, 0.0, 0.0016, 2.0])
    words = fp.to_words(fp.encode(x), max_sites=4)
    total = (words.astype(np.uint64) * np.uint64(3)) % np.uint64(2**bits)  # three sites sent x
    np.testing.assert_allclose(
        fp.decode(total.astype(words.dtype), num_sites=3), 3 * np.rint(x * 1000) / 1000
    )


def test_decoded_sum_out_of_range_raises() -> None:
    fp = FixedPoint(scale=10.0, bound=1.0)
    with pytest.raises(SecAggError, match="exceeds 2 sites x capacity 10"):
        fp.decode(np.array([21], dtype=np.uint32), num_sites=2)


def test_bad_configuration_lists_every_problem() -> None:
    with pytest.raises(ConfigError, match=r"scale must be.*bound must be.*modulus_bits"):
        FixedPoint(scale=0.0, bound=-1.0, modulus_bits=70)

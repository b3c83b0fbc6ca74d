"""The unmasked sum is the plaintext sum, with and without dropouts, complete and sparse graphs."""

from __future__ import annotations

import numpy as np
import pytest

from fedcore.errors import SecAggError
from fedcore.secagg import FixedPoint, proposed_degree
from fedcore.secagg.simulate import run_round

from .helpers import federation, names, plain_sum, random_words


@pytest.mark.parametrize("n", [3, 5, 10])
def test_sum_is_the_plaintext_integer_sum(n: int) -> None:
    sites, inputs = federation(n), random_words(n, 257, seed=n)
    total, state, _ = run_round(sites, inputs)
    assert state.survivors == names(n)
    np.testing.assert_array_equal(total, plain_sum(inputs, set(names(n))))


@pytest.mark.parametrize("n", [3, 5, 10])
def test_decoded_float_sum_within_fixed_point_tolerance(n: int) -> None:
    fp = FixedPoint(scale=2.0**16, bound=4.0)
    rng = np.random.default_rng(1)
    floats = {s: rng.uniform(-4.0, 4.0, 300) for s in names(n)}
    words = {s: fp.to_words(fp.encode(x), max_sites=n) for s, x in floats.items()}
    total, _, _ = run_round(federation(n), words)
    decoded = fp.decode(total, num_sites=n)
    exact = np.sum([floats[s] for s in names(n)], axis=0)
    assert np.max(np.abs(decoded - exact)) <= n / (2 * fp.scale)  # the module's stated bound


@pytest.mark.parametrize("bits", [20, 48])
def test_other_moduli_sum_exactly(bits: int) -> None:
    n, rng = 5, np.random.default_rng(2)
    dtype = np.uint32 if bits <= 32 else np.uint64
    inputs = {s: rng.integers(0, 2**bits, 64, dtype=np.uint64).astype(dtype) for s in names(n)}
    total, _, _ = run_round(federation(n), inputs, modulus_bits=bits)
    expect = sum(int(v) for v in (inputs[s][0] for s in names(n))) % 2**bits
    assert total.dtype == dtype and int(total[0]) == expect
    assert np.array_equal(total, np.sum([inputs[s].astype(object) for s in names(n)], axis=0) % 2**bits)


def test_n_minus_t_sites_drop_after_masking() -> None:
    n = 10  # gamma = 1/3: quorum 7, so 3 may drop after sending their masked inputs
    sites, inputs = federation(n), random_words(n, 100, seed=3)
    gone = {"site001", "site004", "site009"}
    # they sent masked inputs, then vanished before signing: U3 keeps them, the other 7 unmask them
    total, state, _ = run_round(sites, inputs, drop={"signatures": gone})
    assert set(state.survivors) == set(names(n))
    np.testing.assert_array_equal(total, plain_sum(inputs, set(names(n))))


def test_sites_that_drop_before_sending_input_are_excluded() -> None:
    n = 10
    sites, inputs = federation(n), random_words(n, 100, seed=4)
    before_input, before_shares = {"site002", "site007"}, {"site005"}
    total, state, _ = run_round(sites, inputs, drop={"shares": before_shares, "masked": before_input})
    keep = set(names(n)) - before_input - before_shares
    assert set(state.survivors) == keep
    np.testing.assert_array_equal(total, plain_sum(inputs, keep))


def test_survivors_that_do_not_reveal_are_covered_by_the_others() -> None:
    n = 10
    sites, inputs = federation(n), random_words(n, 50, seed=5)
    total, _, _ = run_round(sites, inputs, drop={"masked": {"site000"}, "unmask": {"site003", "site006"}})
    np.testing.assert_array_equal(total, plain_sum(inputs, set(names(n)) - {"site000"}))


def test_more_dropouts_than_the_quorum_allows_fail_closed() -> None:
    n = 10
    sites, inputs = federation(n), random_words(n, 10, seed=6)
    with pytest.raises(SecAggError, match="require 7"):
        run_round(sites, inputs, drop={"masked": {"site001", "site002", "site003", "site004"}})


SPARSE = {"max_corrupt_fraction": 0.05, "max_dropout_fraction": 0.1, "min_honest": 3, "security_bits": 40}


def test_sparse_graph_small() -> None:
    n = 40
    sites = federation(n, complete_graph_up_to=20, **SPARSE)
    degree = proposed_degree(sites["site000"][0], n)
    assert degree < n - 1
    inputs = random_words(n, 64, seed=7)
    gone = {"site003", "site030"}
    total, _, _ = run_round(sites, inputs, degree=degree, drop={"masked": gone})
    np.testing.assert_array_equal(total, plain_sum(inputs, set(names(n)) - gone))


@pytest.mark.slow
@pytest.mark.long
def test_sparse_graph_150_sites_with_dropouts() -> None:
    n = 150
    sites = federation(n, **SPARSE)
    degree = proposed_degree(sites["site000"][0], n)
    assert degree < 40  # each site masks with a small neighbourhood, not 149 others
    inputs = random_words(n, 32, seed=8)
    gone = {"site010", "site011", "site077"}
    total, _, _ = run_round(sites, inputs, degree=degree, drop={"masked": gone, "shares": {"site140"}})
    np.testing.assert_array_equal(total, plain_sum(inputs, set(names(n)) - gone - {"site140"}))


def test_sites_add_discrete_gaussian_noise_before_masking() -> None:
    from fedcore.privacy.rng import Source
    from fedcore.secagg import discrete_gaussian

    n, sigma, length = 5, 8.0, 4000
    fp = FixedPoint(scale=100.0, bound=1.0, noise_slack=int(20 * sigma))  # 20 sigma: P(exceed) ~ 1e-88
    rng = np.random.default_rng(9)
    floats = {s: rng.uniform(-1, 1, length) for s in names(n)}
    words = {}
    for i, s in enumerate(names(n)):
        noise = discrete_gaussian(Source(secure=False, seed=i), sigma=sigma, size=length)
        noisy = fp.encode(floats[s]) + noise
        words[s] = fp.to_words(noisy, max_sites=n)
    total, _, _ = run_round(federation(n), words)
    err = fp.from_words(total, num_sites=n) - np.sum([fp.encode(floats[s]) for s in names(n)], axis=0)
    # the error is the sum of 5 sites' noise: std sqrt(5) sigma, measured within 5%
    assert err.std() == pytest.approx(np.sqrt(n) * sigma, rel=0.05)

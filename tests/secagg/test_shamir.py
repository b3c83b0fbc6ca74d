"""Shamir over GF(p) with galois: reconstruction, hiding with t - 1 shares, batch = one by one."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from fedcore.errors import SecAggError
from fedcore.secagg import shamir


def test_any_threshold_subset_recovers_the_secret() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=3, holders=5)
    assert all(len(s) == shamir.SHARE_BYTES for _, s in shares)
    for subset in itertools.combinations(shares, 3):
        assert shamir.combine(list(subset), threshold=3) == secret


def test_extreme_secrets_round_trip() -> None:
    for secret in (bytes(32), b"\xff" * 32, bytes(31) + b"\x80"):
        assert shamir.combine(shamir.split(secret, threshold=4, holders=9)[3:7], threshold=4) == secret


def test_t_minus_1_shares_are_consistent_with_every_secret() -> None:
    """Perfect hiding: for t - 1 real shares and ANY candidate secret there is a t-th share (held
    by a site the coordinator does not control) that makes them reconstruct exactly that candidate."""
    gf = shamir._field()
    t, secret = 4, os.urandom(32)
    shares = shamir.split(secret, threshold=t, holders=7)[: t - 1]
    for candidate in (bytes(32), os.urandom(32)):
        # the t-th share at index 7 for the polynomial through (0, candidate) and the t - 1 shares
        xs = gf(np.array([0] + [i for i, _ in shares]))
        ys = [np.array(shamir._digits(candidate))] + [
            np.frombuffer(s, dtype="<u4").astype(np.int64) for _, s in shares
        ]
        weights = []
        for i in range(t):
            w = gf(1)
            for j in range(t):
                if j != i:
                    w = w * (gf(7) - xs[j]) / (xs[i] - xs[j])
            weights.append(w)
        at7 = gf(np.zeros(shamir.CHUNKS, dtype=np.int64))
        for w, y in zip(weights, ys, strict=True):
            at7 = at7 + w * gf(y)
        forged = np.asarray(at7, dtype="<u4").tobytes()
        assert shamir.combine([*shares, (7, forged)], threshold=t) == candidate


def test_fewer_than_t_shares_uniform() -> None:
    """One share's digits over many splits of one secret are uniform in GF(p) (chi-square, p > 1e-6)."""
    from scipy.stats import chisquare

    secret = os.urandom(32)
    values = np.concatenate(
        [np.frombuffer(shamir.split(secret, threshold=2, holders=2)[0][1], dtype="<u4") for _ in range(400)]
    )
    bins = np.bincount((values.astype(np.int64) * 16) // shamir.PRIME, minlength=16)
    assert chisquare(bins).pvalue > 1e-6


def test_batch_equals_one_by_one_and_groups_by_indices() -> None:
    secrets = {f"s{k}": os.urandom(32) for k in range(5)}
    split = {o: shamir.split(s, threshold=3, holders=6) for o, s in secrets.items()}
    given = {o: sh[k % 3 : k % 3 + 3] for k, (o, sh) in enumerate(split.items())}  # three index sets
    assert shamir.combine_many(given, threshold=3) == secrets


def test_bad_shares_raise() -> None:
    shares = shamir.split(os.urandom(32), threshold=2, holders=3)
    with pytest.raises(SecAggError, match="duplicate"):
        shamir.combine([shares[0], shares[0]], threshold=2)
    with pytest.raises(SecAggError, match="cannot recover"):
        shamir.combine(shares[:1], threshold=2)
    with pytest.raises(SecAggError, match="outside the field"):
        shamir.combine([shares[0], (2, b"\xff" * shamir.SHARE_BYTES)], threshold=2)
    with pytest.raises(SecAggError, match="threshold"):
        shamir.split(os.urandom(32), threshold=4, holders=3)

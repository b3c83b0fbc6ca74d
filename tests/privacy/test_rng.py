"""The secure source: keystream, the polar sum-of-four sampler against a scalar oracle, statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

from fedcore.privacy.rng import AesCtrStream, secure_source

KEY, NONCE = bytes(range(32)), bytes(16)


def _fixed(stream: AesCtrStream) -> AesCtrStream:
    """Re-key ``stream`` with a known key (the real cipher), so a test can replay its words."""
    stream._enc = Cipher(algorithms.AES(KEY), modes.CTR(NONCE)).encryptor()
    return stream


def test_words_are_the_aes_ctr_keystream_and_reuse_a_buffer() -> None:
    stream = _fixed(AesCtrStream())
    buf = np.empty(1002, dtype=np.uint64)
    first = stream.words(1000, buf)
    assert first.base is buf or first.base is buf.base
    more = stream.words(7)
    ref = Cipher(algorithms.AES(KEY), modes.CTR(NONCE)).encryptor().update(bytes(8 * 1007))
    assert first.tobytes() + more.tobytes() == ref
    with pytest.raises(ValueError, match="1002"):
        stream.words(1000, np.empty(1001, dtype=np.uint64))


def _oracle_sum_of_four(words: np.ndarray, k: int) -> list[float]:
    """Scalar polar method on the same words: kept points in order, four normals per output."""
    normals: list[float] = []
    for i in range(0, len(words) - 1, 2):
        u, v = ((int(w) >> 12) / 2.0**52 * 2.0 - 1.0 for w in words[i : i + 2])
        s = u * u + v * v
        if 0.0 < s < 1.0:
            f = math.sqrt(-2.0 * math.log(s) / s)
            normals += [u * f, v * f]
        if len(normals) >= 4 * k:
            break
    return [sum(normals[4 * j : 4 * j + 4]) / 2 for j in range(k)]


def test_sum_of_four_matches_a_scalar_polar_oracle() -> None:
    """Each output is (z1 + z2 + z3 + z4) / 2 of four polar-method normals (the FP mitigation)."""
    source = secure_source()
    assert source.stream is not None
    _fixed(source.stream)
    got = source.normal(300).numpy()
    words = _fixed(AesCtrStream()).words(4000)
    np.testing.assert_allclose(got, _oracle_sum_of_four(words, 300), rtol=1e-12, atol=1e-12)


def _oracle_sum_of_four32(words: np.ndarray, k: int) -> list[float]:
    """The float32 sampler's scalar oracle, for one block: its ``m`` tries take u from the first
    ``m`` 32-bit halves of the block's words and v from the next ``m``, 23 bits each; kept point
    ``j`` (in try order) pairs with kept point ``j + k``: output ``j`` is their four normals / 2."""
    f32 = np.float32
    m = int(2 * k * (4 / math.pi) + 4 * math.sqrt(2 * k) + 16)
    halves = words[:m].view(np.uint32)
    points: list[float] = []
    for hu, hv in zip(halves[:m], halves[m : 2 * m], strict=True):
        u, v = (f32(int(h) >> 9) / f32(2.0**23) * f32(2.0) - f32(1.0) for h in (hu, hv))
        s = f32(u * u) + f32(v * v)
        if 0.0 < s < 1.0:
            f = math.sqrt(-2.0 * math.log(s) / s)
            points.append(float(u) * f + float(v) * f)  # two normals
    assert len(points) >= 2 * k, "the block fell short: the oracle covers one block"
    return [(points[j] + points[j + k]) / 2 for j in range(k)]


def test_float32_sum_of_four_matches_its_oracle() -> None:
    """A float32 buffer gets the float32 sampler: still four polar draws per value (one rounding
    error of float32 size each), at one keystream word per try."""
    source = secure_source()
    assert source.stream is not None
    _fixed(source.stream)
    got = source.noise_(torch.empty(300, dtype=torch.float32), 3.0).numpy()
    words = _fixed(AesCtrStream()).words(2000)
    np.testing.assert_allclose(got, 3.0 * np.array(_oracle_sum_of_four32(words, 300)), rtol=2e-5, atol=2e-5)


def test_secure_normals_distribution_1e6() -> None:
    z = secure_source().normal(1_000_000).numpy()
    assert abs(z.mean()) < 5e-3  # standard error 1e-3
    assert z.var() == pytest.approx(1.0, abs=7e-3)  # standard error 1.4e-3
    assert stats.kurtosis(z, fisher=False) == pytest.approx(3.0, abs=0.03)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    assert np.abs(z).max() < 6.5  # P(|Z| > 6.5) over 1e6 draws ~ 8e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_distribution_1e6_per_dtype(dtype: torch.dtype) -> None:
    z = secure_source().noise_(torch.empty(1_000_000, dtype=dtype), 1.0).double().numpy()
    assert abs(z.mean()) < 5e-3 and z.var() == pytest.approx(1.0, abs=7e-3)
    for lag in (1, 2, 65_536):  # neighbours, and values one noise block apart, are uncorrelated
        assert abs(np.corrcoef(z[:-lag], z[lag:])[0, 1]) < 5e-3  # standard error 1e-3
    assert stats.kurtosis(z, fisher=False) == pytest.approx(3.0, abs=0.03)
    assert stats.kstest(z, "norm").pvalue > 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_fills_in_place_with_the_requested_std(dtype: torch.dtype) -> None:
    out = torch.full((300, 1000), float("nan"), dtype=dtype)
    back = secure_source().noise_(out, 2.5)
    assert back is out and bool(torch.isfinite(out).all())
    assert float(out.double().std()) == pytest.approx(2.5, rel=0.01)
    assert abs(float(out.double().mean())) < 0.03
    view = torch.zeros(10, 6, dtype=dtype)[:, ::2]  # not contiguous: the general path
    secure_source().noise_(view, 1.0)
    assert bool((view != 0).all())

"""Noise is tested statistically (fixed seed, stated tolerance); the one CSPRNG; clipping."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcore.errors import PrivacyError
from fedcore.privacy.noise import clip_to_norm, gaussian_noise, l2_norm
from fedcore.privacy.rng import PrivacyWarning, Source, check_rng_request, secure_source, seeded_source

N = 200_000
# The sample std of N normal draws has relative standard error 1/sqrt(2N) = 0.16%; 2% is > 10 sigma.
STD_TOL = 0.02


def _seeded(seed: int = 1234) -> Source:
    with pytest.warns(PrivacyWarning, match="REPRODUCIBLE"):
        return seeded_source(seed)


@pytest.mark.parametrize("std", [0.5, 3.0])
def test_gaussian_noise_std_and_mean_seeded(std: float) -> None:
    x = gaussian_noise((N,), std=std, source=_seeded())
    assert x.shape == (N,) and x.dtype == np.float64
    assert abs(x.std() / std - 1) < STD_TOL
    assert abs(x.mean()) < 5 * std / np.sqrt(N)


def test_gaussian_noise_std_secure() -> None:
    source = secure_source()
    assert source.secure
    x = gaussian_noise((N,), std=2.0, source=source)
    assert abs(x.std() / 2.0 - 1) < STD_TOL
    assert abs(x.mean()) < 5 * 2.0 / np.sqrt(N)
    # Kurtosis of a normal is 3: the 4-draw mitigation keeps the distribution Gaussian.
    z = x / x.std()
    assert abs(np.mean(z**4) - 3.0) < 0.1


def test_secure_uniforms_look_uniform() -> None:
    u = secure_source().uniform(N).numpy()
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    counts = np.bincount((u * 10).astype(int).clip(0, 9), minlength=10)
    assert counts.min() > 0.09 * N and counts.max() < 0.11 * N


def test_secure_source_is_not_reproducible_and_not_picklable() -> None:
    assert not np.array_equal(secure_source().uniform(4).numpy(), secure_source().uniform(4).numpy())
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secure_source())


def test_seeded_source_is_reproducible_and_warns() -> None:
    a = gaussian_noise(5, std=1.0, source=_seeded(7))
    b = gaussian_noise(5, std=1.0, source=_seeded(7))
    np.testing.assert_array_equal(a, b)
    with pytest.warns(PrivacyWarning, match="NOT for production"):
        assert not seeded_source(None).secure


def test_secure_source_refuses_seed_and_does_not_warn() -> None:
    with pytest.raises(PrivacyError, match="cannot be seeded"):
        check_rng_request(3, secure=True, what="DP noise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert secure_source().secure


def test_zero_std_and_bad_std() -> None:
    source = _seeded()
    np.testing.assert_array_equal(gaussian_noise((2, 3), std=0.0, source=source), np.zeros((2, 3)))
    with pytest.raises(PrivacyError, match="std"):
        gaussian_noise(3, std=-1.0, source=source)


@settings(max_examples=50, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=3),
    scale=st.floats(0.0, 100.0),
    clip=st.floats(0.01, 10.0),
)
def test_clip_respects_bound_and_does_not_mutate(
    shapes: list[tuple[int, int]], scale: float, clip: float
) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=s) * scale for s in shapes]
    before = [a.copy() for a in arrays]
    clipped = clip_to_norm(arrays, clipping_norm=clip)
    assert l2_norm(clipped) <= clip * (1 + 1e-9)
    for a, b in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(a, b)
    norm = l2_norm(arrays)
    if norm <= clip:
        for a, c in zip(arrays, clipped, strict=True):
            np.testing.assert_array_equal(a, c)
    elif norm > 0:  # direction is kept
        np.testing.assert_allclose(clipped[0] * norm / clip, arrays[0], rtol=1e-9)


def test_clip_zero_norm_is_handled() -> None:
    out = clip_to_norm([np.zeros(3)], clipping_norm=1.0)
    np.testing.assert_array_equal(out[0], np.zeros(3))
    with pytest.raises(PrivacyError, match="non-finite"):
        clip_to_norm([np.array([np.inf])], clipping_norm=1.0)
    with pytest.raises(PrivacyError, match="clipping_norm"):
        clip_to_norm([np.ones(2)], clipping_norm=0.0)

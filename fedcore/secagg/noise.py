"""Integer noise a site adds before masking: discrete Gaussian and Skellam, vectorised.

Randomness is an argument: a ``fedcore.privacy.rng.Source`` (the CSPRNG on a site; a seeded one
in tests), read as uniforms in (0, 1]. Both samplers are exact algorithms run in float64
arithmetic (53-bit uniforms), as the project's other inversion samplers are:

- ``discrete_gaussian``: Canonne, Kamath & Steinke (NeurIPS 2020), Alg. 3: a discrete Laplace of
  scale ``t = floor(sigma) + 1`` (the difference of two geometrics, by inversion), kept with
  probability ``exp(-(|y| - sigma^2 / t)^2 / (2 sigma^2))``. Used by the distributed discrete
  Gaussian of Kairouz, Liu & Steinke (ICML 2021): each site adds N_Z(0, sigma^2).
- ``skellam``: Sk(mu) = Poisson(mu / 2) - Poisson(mu / 2) (Agarwal, Kairouz & Liu, NeurIPS 2021);
  Poisson by table inversion below lam = 10, else by Hormann's PTRS transformed rejection (1993),
  as numpy's own Poisson sampler. Skellams add up to a Skellam: n sites' Sk(mu) sum to Sk(n mu).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaln

from fedcore.errors import PrivacyError
from fedcore.privacy.rng import Source
from fedcore.secagg.dp import DistributedNoise, Mechanism

__all__ = ["discrete_gaussian", "draw", "poisson", "skellam"]


def _uniforms(source: Source, n: int) -> NDArray[np.float64]:
    return source.uniform(n).numpy()


def _check(name: str, value: float, size: int) -> None:
    if not (math.isfinite(value) and value > 0) or size < 0:
        raise PrivacyError(f"{name} must be finite and > 0 and size >= 0, got {name}={value}, size={size}")


def discrete_gaussian(source: Source, *, sigma: float, size: int) -> NDArray[np.int64]:
    """``size`` draws of the discrete Gaussian N_Z(0, sigma^2) (CKS 2020, Alg. 3)."""
    _check("sigma", sigma, size)
    t = math.floor(sigma) + 1
    parts: list[NDArray[np.int64]] = []
    got = 0
    while got < size:
        m = int((size - got) * 2.0) + 64  # acceptance is above 1/2 for t = floor(sigma) + 1
        u = _uniforms(source, 3 * m)
        g = np.floor(-t * np.log(u[: 2 * m])).astype(np.int64)  # Geometric(1 - exp(-1/t)) on {0, 1, ...}
        y = g[:m] - g[m:]
        keep = u[2 * m :] <= np.exp(-((np.abs(y) - sigma**2 / t) ** 2) / (2 * sigma**2))
        parts.append(y[keep])
        got += int(keep.sum())
    out: NDArray[np.int64] = np.concatenate(parts)[:size] if parts else np.zeros(0, dtype=np.int64)
    return out


def _poisson_small(source: Source, lam: float, size: int) -> NDArray[np.int64]:
    top = int(lam + 40 * math.sqrt(lam) + 40)  # P[X > top] < 1e-60
    k = np.arange(top + 1)
    cdf = np.cumsum(np.exp(k * math.log(lam) - lam - gammaln(k + 1)))
    u = _uniforms(source, size)
    out: NDArray[np.int64] = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="left"), top).astype(np.int64)
    return out


def _poisson_ptrs(source: Source, lam: float, size: int) -> NDArray[np.int64]:
    slam, loglam = math.sqrt(lam), math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2)
    parts: list[NDArray[np.int64]] = []
    got = 0
    while got < size:
        m = int((size - got) * 1.25) + 64
        uv = _uniforms(source, 2 * m)
        u, v = uv[:m] - 0.5, uv[m:]
        us = 0.5 - np.abs(u)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            k = np.floor((2 * a / us + b) * u + lam + 0.43)
            quick = (us >= 0.07) & (v <= vr)
            ok = (k >= 0) & ~((us < 0.013) & (v > us))
            lhs = np.log(v) + math.log(invalpha) - np.log(a / (us * us) + b)
            rhs = -lam + k * loglam - gammaln(np.maximum(k, 0) + 1)
            keep = quick | (ok & (lhs <= rhs))
        parts.append(k[keep].astype(np.int64))  # kept in draw order: PTRS per coordinate, vectorised
        got += int(keep.sum())
    out: NDArray[np.int64] = np.concatenate(parts)[:size]
    return out


def poisson(source: Source, *, lam: float, size: int) -> NDArray[np.int64]:
    """``size`` Poisson(lam) draws: table inversion below 10, PTRS (Hormann 1993) above."""
    _check("lam", lam, size)
    return _poisson_small(source, lam, size) if lam < 10 else _poisson_ptrs(source, lam, size)


def skellam(source: Source, *, variance: float, size: int) -> NDArray[np.int64]:
    """``size`` draws of the symmetric Skellam of ``variance`` mu: Poisson(mu/2) - Poisson(mu/2)."""
    _check("variance", variance, size)
    both = poisson(source, lam=variance / 2, size=2 * size)
    return both[:size] - both[size:]


def draw(noise: DistributedNoise, source: Source, *, size: int) -> NDArray[np.int64]:
    """``size`` draws of one site's ``noise`` (its stddev or variance in lattice units)."""
    if noise.mechanism is Mechanism.DISCRETE_GAUSSIAN:
        return discrete_gaussian(source, sigma=noise.scale, size=size)
    return skellam(source, variance=noise.scale, size=size)

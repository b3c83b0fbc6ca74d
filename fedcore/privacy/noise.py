"""Noise and clipping math on numpy arrays; randomness is always an argument (a ``Source``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from fedcore.errors import PrivacyError
from fedcore.privacy.rng import Source

__all__ = ["clip_to_norm", "gaussian_noise", "l2_norm"]

Arrays = tuple[NDArray[np.float64], ...]


def gaussian_noise(shape: int | Sequence[int], *, std: float, source: Source) -> NDArray[np.float64]:
    """N(0, std^2) noise of ``shape`` from ``source`` (``secure_source()`` in production)."""
    return source.normal_array(shape, std=std)


def l2_norm(arrays: Sequence[NDArray[np.float64]]) -> float:
    """The L2 norm of all ``arrays`` flattened together (the norm DP clipping bounds)."""
    return math.sqrt(sum(float(np.vdot(a, a)) for a in arrays))


def clip_to_norm(arrays: Sequence[NDArray[np.float64]], *, clipping_norm: float) -> Arrays:
    """Scale ``arrays`` jointly by ``min(1, C / ||arrays||_2)`` (Abadi et al. 2016, Eq. 4).

    Returns new arrays; inputs are never modified. A zero-norm input is returned unchanged (copied)
    instead of dividing by zero.
    """
    if not (math.isfinite(clipping_norm) and clipping_norm > 0):
        raise PrivacyError(f"clipping_norm must be finite and > 0, got {clipping_norm}")
    norm = l2_norm(arrays)
    if not math.isfinite(norm):
        raise PrivacyError(f"cannot clip an update with a non-finite norm ({norm})")
    factor = 1.0 if norm <= clipping_norm else clipping_norm / norm
    return tuple(np.asarray(a, dtype=np.float64) * factor for a in arrays)

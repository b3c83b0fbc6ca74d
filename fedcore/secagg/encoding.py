"""Fixed-point encoding of float vectors into words mod 2^k, with no silent saturation.

A value x with ``|x| <= bound`` becomes ``rint(x * scale)``, an integer of magnitude at most
``ceil(bound * scale)``; integer noise added afterwards may take it up to ``capacity = ceil(bound *
scale) + noise_slack``. A value outside [-bound, bound] (or non-finite), or a noisy integer beyond
the capacity, is an ERROR: the caller clips before, on purpose. ``check_sites`` proves the sum of
``max_sites`` such integers cannot wrap: ``max_sites * capacity < 2^(k-1)``, so a sum is read back
as a signed integer unambiguously; the decoder checks the sum is within ``num_sites * capacity``
(an out-of-range sum means a cheating site or a bad configuration: an error, never a clamp).

Rounding error: each site's rounding moves a coordinate by at most ``1 / (2 scale)``, so the decoded
sum of n sites is within ``n / (2 scale)`` of the float sum (noise aside).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedcore.errors import ConfigError, SecAggError, UpdateError
from fedcore.secagg.prg import word_dtype

__all__ = ["FixedPoint"]


@dataclass(frozen=True)
class FixedPoint:
    """``scale`` lattice points per unit; ``bound`` per coordinate; sums mod ``2^modulus_bits``."""

    scale: float
    bound: float
    modulus_bits: int = 32
    noise_slack: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.scale) and self.scale > 0):
            problems.append(f"scale must be finite and > 0, got {self.scale}")
        if not (math.isfinite(self.bound) and self.bound > 0):
            problems.append(f"bound must be finite and > 0, got {self.bound}")
        if self.noise_slack < 0:
            problems.append(f"noise_slack must be >= 0, got {self.noise_slack}")
        try:
            word_dtype(self.modulus_bits)
        except ConfigError as err:
            problems.append(str(err))
        if problems:
            raise ConfigError("fixed-point encoding: " + "; ".join(problems))

    @property
    def capacity(self) -> int:
        """The largest integer magnitude one site may submit per coordinate (value plus noise)."""
        return math.ceil(self.bound * self.scale) + self.noise_slack

    def check_sites(self, max_sites: int) -> None:
        """Raise ``ConfigError`` unless a sum of ``max_sites`` inputs cannot wrap mod 2^k."""
        limit = 1 << (self.modulus_bits - 1)
        if max_sites < 1 or max_sites * self.capacity >= limit:
            raise ConfigError(
                f"{max_sites} sites x capacity {self.capacity} (bound {self.bound} x scale {self.scale} "
                f"+ slack {self.noise_slack}) does not fit in 2^{self.modulus_bits - 1}: the sum could "
                "wrap; lower the "
                "scale or the bound, or raise modulus_bits"
            )

    def encode(self, values: ArrayLike) -> NDArray[np.int64]:
        """Lattice integers ``rint(x * scale)``; a non-finite or out-of-bound value raises ``UpdateError``."""
        x = np.asarray(values, dtype=np.float64).ravel()
        bad = ~np.isfinite(x) | (np.abs(x) > self.bound)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UpdateError(
                f"{int(bad.sum())} value(s) outside [-{self.bound}, {self.bound}] "
                f"(first: index {i}, value {x[i]}); "
                "clip the update to the bound before encoding (secure aggregation never saturates silently)"
            )
        return np.rint(x * self.scale).astype(np.int64)

    def to_words(self, ints: NDArray[np.int64], *, max_sites: int) -> NDArray[np.unsignedinteger]:
        """Integers (after any noise) as words mod 2^k; beyond the capacity raises ``UpdateError``."""
        self.check_sites(max_sites)
        peak = int(np.max(np.abs(ints), initial=0))
        if peak > self.capacity:
            raise UpdateError(
                f"an encoded value of magnitude {peak} exceeds the capacity {self.capacity} "
                "(noise beyond noise_slack?); raise noise_slack"
            )
        dtype = word_dtype(self.modulus_bits)
        words = ints.astype(np.int64).view(np.uint64) & np.uint64((1 << self.modulus_bits) - 1)
        return words.astype(dtype)

    def from_words(self, total: NDArray[np.unsignedinteger], *, num_sites: int) -> NDArray[np.int64]:
        """The signed integer sum of ``num_sites`` inputs; out of range raises ``SecAggError``."""
        k = self.modulus_bits
        signed = total.astype(np.int64)
        signed[signed >= (1 << (k - 1))] -= 1 << k
        peak = int(np.max(np.abs(signed), initial=0))
        if peak > num_sites * self.capacity:
            raise SecAggError(
                f"a decoded sum of magnitude {peak} exceeds {num_sites} sites x capacity {self.capacity}: "
                "a site sent an out-of-range input or the configuration differs between sites"
            )
        return signed

    def decode(self, total: NDArray[np.unsignedinteger], *, num_sites: int) -> NDArray[np.float64]:
        """The float sum: ``from_words / scale`` (within ``num_sites / (2 scale)`` of the true sum)."""
        return self.from_words(total, num_sites=num_sites) / self.scale

"""What a job's ``[privacy.secagg]`` means in numbers, the same at the coordinator and every site.

Each site sends ``x = [w * clip(delta), w]`` (``weight = "examples"``: w its training rows, the
weight masked in as the last coordinate) or ``x = clip(delta)`` (``"uniform"``), fixed-point encoded
with one ``scale`` that every party derives from the job and its number of sites (``fixed_point``),
plus, under distributed DP, its own integer noise before masking. The coordinator decodes only the
sum over the survivors and divides by the summed weight (or by the number of survivors).

Scale: the largest power of two ``s`` with ``n (ceil(bound s) + slack) < 2^(k-1)`` (``FixedPoint
.check_sites``: a sum of ``n`` inputs cannot wrap), ``bound = clipping_norm`` (uniform) or
``max(clipping_norm, 1) * max_weight`` (examples; the weight coordinate is at most ``max_weight``),
``slack`` = 14 noise standard deviations (a draw beyond it is an error, probability < 1e-44 per
coordinate). Noise (Kairouz et al. 2021; Agarwal et al. 2021): the summed noise of ``n`` sites has
std ``noise_multiplier * clipping_norm`` (float units), each site adding std ``z C s / sqrt(n)``
(discrete Gaussian) or variance ``(z C s)^2 / n`` (Skellam) in lattice units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from dp_accounting.dp_event import DpEvent
from numpy.typing import NDArray

from fedcore.config.secagg import SecAggSpec
from fedcore.errors import ConfigError, UpdateError
from fedcore.privacy.rng import Source
from fedcore.secagg.dp import DistributedNoise, Mechanism, Trust, lattice_sensitivity, round_event
from fedcore.secagg.encoding import FixedPoint
from fedcore.secagg.noise import draw

__all__ = ["Encoder", "encoder", "noise_events"]

_SLACK_SIGMAS = 14


@dataclass(frozen=True)
class Encoder:
    """The job's fixed point for ``num_sites`` sites, and each site's noise (lattice units)."""

    spec: SecAggSpec
    num_sites: int
    point: FixedPoint
    noise: DistributedNoise | None

    @property
    def weighted(self) -> bool:
        return self.spec.weight == "examples"

    def length(self, num_params: int) -> int:
        """Words a site sends for a model of ``num_params`` parameters."""
        return num_params + (1 if self.weighted else 0)

    def encode(self, flat_delta: NDArray[np.float64], weight: float, source: Source) -> NDArray[np.int64]:
        """The site's integers: clipped (L2, explicit), weighted, rounded, noised; checked to fit."""
        spec = self.spec
        if self.weighted and not 0 < weight <= spec.max_weight:
            raise UpdateError(
                f"this site's weight {weight:g} is outside (0, max_weight={spec.max_weight}]; the job "
                "must raise [privacy.secagg] max_weight (secure aggregation never saturates silently)"
            )
        norm = float(np.linalg.norm(flat_delta))
        # a hair inside the ball: a clipped coordinate never exceeds the bound by a rounding error
        clipped = flat_delta * min(1.0, spec.clipping_norm * (1 - 1e-12) / norm) if norm > 0 else flat_delta
        values = np.append(clipped * weight, weight) if self.weighted else clipped
        ints = self.point.encode(values)
        if self.noise is not None:
            ints = ints + draw(self.noise, source, size=ints.size)
        return ints

    def words(self, ints: NDArray[np.int64]) -> NDArray[np.unsignedinteger]:
        return self.point.to_words(ints, max_sites=self.num_sites)

    def decode(self, total: NDArray[np.unsignedinteger], survivors: int) -> tuple[NDArray[np.float64], float]:
        """(the survivors' summed update, their summed weight) from the unmasked sum."""
        values = self.point.decode(total, num_sites=survivors)
        if not self.weighted:
            return values, float(survivors)
        weight = float(values[-1])
        if weight <= 0:
            raise UpdateError(f"the unmasked total weight is {weight:g}: a site sent a bad input")
        return values[:-1], weight


def _noise(spec: SecAggSpec, num_sites: int, scale: float) -> DistributedNoise | None:
    if not spec.has_noise:
        return None
    std = spec.noise_multiplier * spec.clipping_norm * scale / math.sqrt(num_sites)
    if spec.noise == "ddgauss":
        return DistributedNoise(Mechanism.DISCRETE_GAUSSIAN, std)
    return DistributedNoise(Mechanism.SKELLAM, std**2)


def encoder(spec: SecAggSpec, num_sites: int) -> Encoder:
    """The job's encoder for ``num_sites`` sites (``ConfigError`` when 2^modulus_bits is too small)."""
    uniform = spec.weight == "uniform"
    bound = spec.clipping_norm if uniform else max(spec.clipping_norm, 1.0) * spec.max_weight
    per_unit = spec.noise_multiplier * spec.clipping_norm / math.sqrt(num_sites) if spec.has_noise else 0.0
    room = (2 ** (spec.modulus_bits - 1)) / num_sites - 2
    exponent = math.floor(math.log2(room / (bound + _SLACK_SIGMAS * per_unit))) if room > 0 else -1
    if exponent < 0:
        raise ConfigError(
            f"[privacy.secagg] modulus_bits = {spec.modulus_bits} leaves no precision for {num_sites} sites "
            f"with bound {bound:g}: raise modulus_bits, or lower clipping_norm / max_weight"
        )
    scale = float(2**exponent)
    noise = _noise(spec, num_sites, scale)
    slack = 0 if noise is None else math.ceil(_SLACK_SIGMAS * _std(noise))
    return Encoder(spec, num_sites, FixedPoint(scale, bound, spec.modulus_bits, slack), noise)


def _std(noise: DistributedNoise) -> float:
    return noise.scale if noise.mechanism is Mechanism.DISCRETE_GAUSSIAN else math.sqrt(noise.scale)


def noise_events(
    enc: Encoder, *, dim: int, rounds: int, trust: Trust, min_honest: int, delta: float
) -> tuple[DpEvent, ...]:
    """One round's ``ZCDpEvent`` of the site's own noise (or ``min_honest`` sites', when its policy
    trusts the threshold); the sensitivity is the clipped update's, rounding included (``dim``
    coordinates)."""
    if enc.noise is None:
        return ()
    l2, l1 = lattice_sensitivity(l2_norm=enc.spec.clipping_norm, scale=enc.point.scale, dim=dim)
    event = round_event(
        enc.noise, l2_sensitivity=l2, l1_sensitivity=l1, dim=dim, trust=trust,
        min_honest=min_honest, planned_rounds=rounds, delta=delta,
    )  # fmt: skip
    return (event,)

"""Privacy of distributed integer noise under secure aggregation: RDP, epsilon, and ledger events.

Ported from google-research/federated ``distributed_dp/accounting_utils.py`` (commit a5af8c44,
2024-02-20), without subsampling: a site cannot verify the coordinator's sampling, so it counts
every round it answers (q = 1). All quantities are in the integer (lattice) domain: sensitivities
of the encoded vector and the noise's stddev or variance in lattice units.

- Distributed discrete Gaussian (Kairouz, Liu & Steinke, ICML 2021, Prop. 14 / Eq. 17): the sum of
  n sites' N_Z(0, sigma^2) is within ``tau`` of N_Z(0, n sigma^2), ``tau = 10 sum_{k<n}
  exp(-2 pi^2 sigma^2 k / (k + 1))``; RDP at order a is the least of
  ``a/2 D2^2 + tau d``, ``a/2 (D2^2 + 2 D1 tau + tau^2 d)`` and ``a/2 (D2 + sqrt(d) tau)^2``,
  with ``D = sensitivity / (sqrt(n) sigma)``.
- Distributed Skellam (Agarwal, Kairouz & Liu, NeurIPS 2021, Thm. 3.5 as in the reference code):
  RDP at order a of Sk(mu) is ``a D2^2 / (2 mu) + min(((2a - 1) D2^2 + 6 D1) / (4 mu^2),
  3 D1 / (2 mu))``, mu the variance of the summed noise.

Whose noise counts (``Trust``): ``OWN``: only the noise this site adds (n = 1; the coordinator may
know every other site's noise); ``THRESHOLD``: the noise of ``min_honest`` honest sites, which every
sum the coordinator can learn contains (``RoundParams.min_honest``) - a site trusts this only if its
policy says so.

For the ledger each bound above is linear in the order a, i.e. a (xi, rho)-zCDP guarantee
(Bun & Steinke 2016): RDP(a) <= xi + rho a. ``round_event`` returns ``dp_accounting``'s
``ZCDpEvent`` of the candidate that gives the least epsilon over the planned rounds; every candidate
bounds the RDP at every order, so any is sound. ``RdpAccountant`` composes it; the PLD accountant
does not support it, so fedcore's ``epsilon`` composes any set of events holding one by RDP, whole
(``fedcore.privacy.accounting.accountant_for``): a looser bound, never an under-charge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
from dp_accounting import dp_event, rdp
from numpy.typing import NDArray

from fedcore.errors import PrivacyError

__all__ = [
    "RDP_ORDERS",
    "DistributedNoise",
    "Mechanism",
    "Trust",
    "lattice_sensitivity",
    "noise_rdp",
    "noisy_sites",
    "round_event",
    "site_epsilon",
]

RDP_ORDERS: tuple[int, ...] = (*range(2, 129), 256)
"""The reference code's orders."""


class Mechanism(Enum):
    DISCRETE_GAUSSIAN = "discrete_gaussian"
    SKELLAM = "skellam"


class Trust(Enum):
    OWN = "own"
    THRESHOLD = "threshold"


@dataclass(frozen=True)
class DistributedNoise:
    """One site's noise per coordinate, lattice units: ``scale`` is the stddev (discrete Gaussian)
    or the variance (Skellam)."""

    mechanism: Mechanism
    scale: float

    def __post_init__(self) -> None:
        if not isinstance(self.mechanism, Mechanism):
            raise PrivacyError(
                f"mechanism must be one of {[m.value for m in Mechanism]}, got {self.mechanism!r}"
            )
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise PrivacyError(f"noise scale must be finite and > 0, got {self.scale}")


def noisy_sites(trust: Trust, *, min_honest: int) -> int:
    """How many sites' noise a site counts on: 1 (its own) or ``min_honest`` (policy trusts it)."""
    if trust is Trust.OWN:
        return 1
    if trust is Trust.THRESHOLD and min_honest >= 1:
        return min_honest
    raise PrivacyError(f"trust must be a Trust and min_honest >= 1, got {trust!r}, {min_honest}")


def lattice_sensitivity(*, l2_norm: float, scale: float, dim: int) -> tuple[float, float]:
    """(L2, L1) sensitivity of ``rint(x * scale)`` for ``||x||_2 <= l2_norm`` in ``dim`` coordinates.

    Deterministic rounding moves each coordinate by at most 1/2: L2 <= l2_norm scale + sqrt(d) / 2.
    L1 <= L2 min(sqrt(d), L2) (Cauchy-Schwarz; and |v| <= v^2 on integers), as the reference code.
    """
    if not (l2_norm > 0 and scale > 0 and dim >= 1):
        raise PrivacyError(f"need l2_norm > 0, scale > 0, dim >= 1; got {l2_norm}, {scale}, {dim}")
    l2 = l2_norm * scale + math.sqrt(dim) / 2
    return l2, l2 * min(math.sqrt(dim), l2)


def _ddg_candidates(noise: float, n: int, l2: float, l1: float, dim: int) -> list[tuple[float, float]]:
    tau = 10 * sum(math.exp(-2 * (math.pi * noise) ** 2 * (k / (k + 1))) for k in range(1, n))
    l2s, l1s = l2 / (math.sqrt(n) * noise), l1 / (math.sqrt(n) * noise)
    return [
        (tau * dim, l2s**2 / 2),
        (0.0, (l2s**2 + 2 * l1s * tau + tau**2 * dim) / 2),
        (0.0, (l2s + math.sqrt(dim) * tau) ** 2 / 2),
    ]


def _skellam_candidates(mu: float, l2: float, l1: float) -> list[tuple[float, float]]:
    return [
        ((6 * l1 - l2**2) / (4 * mu**2), l2**2 / (2 * mu) + l2**2 / (2 * mu**2)),
        (3 * l1 / (2 * mu), l2**2 / (2 * mu)),
    ]


def _candidates(noise: DistributedNoise, n: int, l2: float, l1: float, dim: int) -> list[tuple[float, float]]:
    """(xi, rho) pairs: the per-round RDP at order a is the least ``xi + rho a`` (xi may be < 0)."""
    if noise.mechanism is Mechanism.DISCRETE_GAUSSIAN:
        return _ddg_candidates(noise.scale, n, l2, l1, dim)
    return _skellam_candidates(n * noise.scale, l2, l1)


def noise_rdp(
    noise: DistributedNoise,
    *,
    l2_sensitivity: float,
    l1_sensitivity: float,
    dim: int,
    sites: int,
    orders: tuple[int, ...] = RDP_ORDERS,
) -> NDArray[np.float64]:
    """Per-round RDP at ``orders`` of the sum of ``sites`` sites' noise (the reference's formulas).

    The exact minimum of the candidates at each order, and for Skellam the reference's own form
    with ``(2a - 1)`` (identical to its affine split).
    """
    if sites < 1 or dim < 1 or l2_sensitivity <= 0 or l1_sensitivity <= 0:
        raise PrivacyError(
            "need sites, dim >= 1 and sensitivities > 0; "
            f"got {sites}, {dim}, {l2_sensitivity}, {l1_sensitivity}"
        )
    a = np.asarray(orders, dtype=np.float64)
    cands = _candidates(noise, sites, l2_sensitivity, l1_sensitivity, dim)
    out: NDArray[np.float64] = np.min([xi + rho * a for xi, rho in cands], axis=0)
    return out


def site_epsilon(
    noise: DistributedNoise,
    *,
    l2_sensitivity: float,
    l1_sensitivity: float,
    dim: int,
    trust: Trust,
    min_honest: int = 1,
    rounds: int,
    delta: float,
) -> float:
    """Epsilon charged to one site after ``rounds`` rounds, counting the noise ``trust`` allows.

    RDP to (epsilon, delta) by ``dp_accounting.rdp.compute_epsilon`` (Canonne, Kamath & Steinke 2020,
    Prop. 12), the conversion the reference code gets from tensorflow_privacy.
    """
    if rounds < 1 or not 0 < delta < 1:
        raise PrivacyError(f"need rounds >= 1 and delta in (0, 1); got {rounds}, {delta}")
    n = noisy_sites(trust, min_honest=min_honest)
    curve = rounds * noise_rdp(
        noise, l2_sensitivity=l2_sensitivity, l1_sensitivity=l1_sensitivity, dim=dim, sites=n
    )
    eps, _ = rdp.compute_epsilon(RDP_ORDERS, curve, delta)
    return float(eps)


def round_event(
    noise: DistributedNoise,
    *,
    l2_sensitivity: float,
    l1_sensitivity: float,
    dim: int,
    trust: Trust,
    min_honest: int = 1,
    planned_rounds: int,
    delta: float,
) -> dp_event.ZCDpEvent:
    """One round's ``ZCDpEvent`` for the ledger: the sound candidate with the least planned epsilon."""
    n = noisy_sites(trust, min_honest=min_honest)
    if planned_rounds < 1 or not 0 < delta < 1:
        raise PrivacyError(f"need planned_rounds >= 1 and delta in (0, 1); got {planned_rounds}, {delta}")
    if l2_sensitivity <= 0 or l1_sensitivity <= 0 or dim < 1:
        raise PrivacyError(
            f"need sensitivities > 0 and dim >= 1; got {l2_sensitivity}, {l1_sensitivity}, {dim}"
        )
    a = np.asarray(RDP_ORDERS, dtype=np.float64)

    def planned(c: tuple[float, float]) -> float:
        return float(rdp.compute_epsilon(RDP_ORDERS, planned_rounds * (c[0] + c[1] * a), delta)[0])

    sound = [(max(0.0, xi), rho) for xi, rho in _candidates(noise, n, l2_sensitivity, l1_sensitivity, dim)]
    xi, rho = min(sound, key=planned)  # xi < 0 raised to 0: a larger bound, still sound
    return dp_event.ZCDpEvent(rho=float(rho), xi=float(xi))

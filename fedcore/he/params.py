"""HE encryption parameters: the scheme, the ring, the value range and the precision.

Defaults are chosen for add-only aggregation (the coordinator never multiplies), so the modulus
chain is one data prime plus the key-switching prime. See ``README.md`` for the measurements.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import tenseal.sealapi as sealapi

from fedcore.errors import ConfigError

__all__ = ["DEFAULT_PARAMS", "NVFLARE_DEFAULT_PARAMS", "Encryption", "HEParams", "Scheme"]

_NOISE_MARGIN_BITS = 12  # BFV: data-modulus bits above the plain modulus (measured limit: ~9)


class Scheme(Enum):
    """How values are encoded. ``BFV_FIXED_POINT``: exact integer sums of fixed-point values, one
    value per slot, ``N`` slots. ``CKKS``: approximate real arithmetic, ``N/2`` slots."""

    BFV_FIXED_POINT = "bfv-fixed-point"
    CKKS = "ckks"


class Encryption(Enum):
    """``SYMMETRIC``: only secret-key holders can encrypt. ``PUBLIC_KEY``: anyone with the public
    context can encrypt (the coordinator then holds a public key)."""

    SYMMETRIC = "symmetric"
    PUBLIC_KEY = "public-key"


@dataclass(frozen=True)
class HEParams:
    """Encryption parameters of a key set (128-bit security, checked against SEAL's table).

    Parameters
    ----------
    scheme
        Value encoding, see :class:`Scheme`.
    poly_modulus_degree
        Ring dimension ``N`` (power of two).
    coeff_mod_bit_sizes
        Bit sizes of the coefficient-modulus primes; the last one is the key-switching prime and
        never appears in a ciphertext, the others do (each costs ``N`` coefficients per polynomial).
    plain_modulus_bits
        BFV only: bits of the plain modulus ``t`` (a batching prime); sums live in ``(-t/2, t/2)``.
    frac_bits
        BFV only: values are rounded to multiples of ``2**-frac_bits``.
    scale_bits
        CKKS only: the encoding scale ``2**scale_bits``.
    encryption
        Symmetric (default) or public-key encryption.
    max_sites
        The most updates one sum may hold; it sets the headroom of each site's value range.
    """

    scheme: Scheme = Scheme.BFV_FIXED_POINT
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (48, 48)
    plain_modulus_bits: int = 36
    frac_bits: int = 22
    scale_bits: int = 40
    encryption: Encryption = Encryption.SYMMETRIC
    max_sites: int = 64
    plain_modulus: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "coeff_mod_bit_sizes", tuple(self.coeff_mod_bit_sizes))
        problems = _param_problems(self)
        if problems:
            raise ConfigError("invalid HE parameters: " + "; ".join(problems))
        if self.scheme is Scheme.BFV_FIXED_POINT:
            modulus = sealapi.PlainModulus.Batching(self.poly_modulus_degree, self.plain_modulus_bits)
            object.__setattr__(self, "plain_modulus", int(modulus.value()))

    @property
    def slots_per_ciphertext(self) -> int:
        """Values one ciphertext holds."""
        n = self.poly_modulus_degree
        return n if self.scheme is Scheme.BFV_FIXED_POINT else n // 2

    @property
    def max_abs_value(self) -> float:
        """Largest ``|weight * value|`` a site may encrypt so ``max_sites`` sums cannot wrap."""
        if self.scheme is Scheme.BFV_FIXED_POINT:
            return float((self.plain_modulus // 2) // self.max_sites) / 2.0**self.frac_bits
        data_bits = sum(self.coeff_mod_bit_sizes[:-1])
        return 2.0 ** (data_bits - 2 - self.scale_bits) / self.max_sites

    @property
    def resolution(self) -> float:
        """BFV: the rounding step of one value (``2**-frac_bits``); CKKS: ``2**-scale_bits``."""
        bits = self.frac_bits if self.scheme is Scheme.BFV_FIXED_POINT else self.scale_bits
        return 2.0**-bits

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (enums by value, the derived plain modulus included)."""
        out = asdict(self)
        out["scheme"] = self.scheme.value
        out["encryption"] = self.encryption.value
        out["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HEParams:
        """Inverse of :meth:`to_dict`; raises ``ConfigError`` on unknown keys or values."""
        try:
            kwargs = {k: v for k, v in data.items() if k != "plain_modulus"}
            kwargs["scheme"] = Scheme(kwargs.get("scheme", Scheme.BFV_FIXED_POINT.value))
            kwargs["encryption"] = Encryption(kwargs.get("encryption", "symmetric"))
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"cannot read HE parameters {data!r}: {err}") from err


def _max_bits(n: int) -> int:
    return int(sealapi.CoeffModulus.MaxBitCount(n, sealapi.SEC_LEVEL_TYPE.TC128))


def _param_problems(p: HEParams) -> list[str]:
    problems = []
    n, bits = p.poly_modulus_degree, p.coeff_mod_bit_sizes
    if n not in (2048, 4096, 8192, 16384, 32768):
        problems.append(f"poly_modulus_degree must be 2048..32768 (a power of two), got {n}")
    elif sum(bits) > _max_bits(n):
        problems.append(
            f"coeff_mod_bit_sizes {list(bits)} sum to {sum(bits)} bits, over the 128-bit-security "
            f"maximum {_max_bits(n)} for N={n}; use fewer or smaller primes"
        )
    if len(bits) < 2 or not all(17 <= b <= 60 for b in bits):
        problems.append(f"need >= 2 primes of 17..60 bits (the last is for key switching), got {bits}")
    if p.max_sites < 1:
        problems.append(f"max_sites must be >= 1, got {p.max_sites}")
    data_bits = sum(bits[:-1]) if len(bits) >= 2 else 0
    if p.scheme is Scheme.BFV_FIXED_POINT:
        if p.plain_modulus_bits + _NOISE_MARGIN_BITS > data_bits:
            problems.append(
                f"plain_modulus_bits={p.plain_modulus_bits} leaves less than {_NOISE_MARGIN_BITS} "
                f"bits of noise room under the {data_bits}-bit data modulus; lower it"
            )
        room = p.plain_modulus_bits - 1 - math.ceil(math.log2(max(p.max_sites, 1)))
        if p.frac_bits < 0 or p.frac_bits > room:
            problems.append(
                f"frac_bits must be in 0..{room} (plain_modulus_bits - 1 - log2(max_sites)), "
                f"got {p.frac_bits}"
            )
    elif p.scale_bits + 2 >= data_bits:
        problems.append(f"scale_bits={p.scale_bits} must be < {data_bits - 2} (data bits - 2)")
    return problems


DEFAULT_PARAMS = HEParams()
"""Add-only default: BFV fixed point, N=4096, q=[48, 48], t~2^36, 2^-22 resolution, 64 sites."""

NVFLARE_DEFAULT_PARAMS = HEParams(
    scheme=Scheme.CKKS,
    poly_modulus_degree=8192,
    coeff_mod_bit_sizes=(60, 40, 40),
    scale_bits=40,
    encryption=Encryption.PUBLIC_KEY,
)
"""NVFlare's default CKKS context (N=8192, [60, 40, 40], scale 2^40, public key), for comparison."""

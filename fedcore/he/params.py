"""HE encryption parameters: the scheme, the ring, the value range and the precision.

Defaults are chosen for add-only aggregation (the coordinator never multiplies), so the modulus
chain is one data prime plus the key-switching prime. See ``README.md`` for the measurements.

Why a BFV sum of ``max_sites`` ciphertexts decrypts exactly (Fan & Vercauteren 2012, sec. 4;
SEAL's invariant-noise form, Chen, Laine & Player 2017, sec. 2). SEAL encrypts a plaintext
polynomial ``m`` as ``c0 + c1*s = round(q*m/t) + e (mod q)``, where ``q`` is the data modulus (all
coefficient primes but the last) and ``t`` the plain modulus, so ``t/q * (c0 + c1*s) = m + t/q*(e +
r)`` with ``|r| <= 1/2`` per coefficient. Adding ``K`` ciphertexts adds the ``e + r`` terms (a wrap
of the plaintexts mod ``t`` adds a multiple of ``q``, which vanishes), and decryption rounds to the
right ``m`` while every coefficient of ``E = sum(e_i + r_i)`` satisfies ``|E| < q/(2t)``, i.e.
``Delta/2`` with ``Delta = q/t``. SEAL samples ``e`` from a centred binomial distribution (42
coins, sigma ~3.2), so ``|e| <= 21`` per coefficient with certainty; public-key encryption adds
``u*e0 + e1*s`` with ternary ``u``, ``s``: ``|e| <= 21*(2N+1)``. :func:`fresh_noise_bound` returns
``B`` (this bound plus the rounding half), and :class:`HEParams` requires

    2 * max_sites * B < q / t

a worst-case bound: it holds for *correlated* noise too (the same ciphertext added ``K`` times),
not only for independent encryptions, whose noise grows like ``sqrt(K)``. It needs ``log2(q/t)``
above ``1 + log2(21.5 * K)``: 11.4 bits for 64 sites (the default's 12.0 bits suffice), 15.4 for
1,024. :func:`params_for_sites` picks a larger data prime (and ring, if 128-bit security needs it)
for a larger ``max_sites``. Measured (SEAL's ``invariant_noise_budget``, bits left, symmetric):
default [48, 48]: 7 fresh, 4 after 64 independent encryptions, 1 after one ciphertext added 64
times; ``params_for_sites(1024)`` [52, 52]: 11 fresh, 6 after 1,024 independent, 1 after one
ciphertext added 1,024 times (the correlated worst case the bound is sized for).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

import tenseal.sealapi as sealapi

from fedcore.errors import ConfigError

__all__ = [
    "DEFAULT_PARAMS",
    "NVFLARE_DEFAULT_PARAMS",
    "Encryption",
    "HEParams",
    "Scheme",
    "check_max_sites",
    "fresh_noise_bound",
    "params_for_sites",
]

_CBD_BOUND = 21  # SEAL's error sampler: centred binomial over 42 coins, |e| <= 21 per coefficient
_RINGS = (2048, 4096, 8192, 16384, 32768)


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
    if n not in _RINGS:
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
        if not problems:
            problems.extend(_noise_problems(p))
        room = p.plain_modulus_bits - 1 - math.ceil(math.log2(max(p.max_sites, 1)))
        if p.frac_bits < 0 or p.frac_bits > room:
            problems.append(
                f"frac_bits must be in 0..{room} (plain_modulus_bits - 1 - log2(max_sites)), "
                f"got {p.frac_bits}"
            )
    elif p.scale_bits + 2 >= data_bits:
        problems.append(f"scale_bits={p.scale_bits} must be < {data_bits - 2} (data bits - 2)")
    return problems


def fresh_noise_bound(p: HEParams) -> float:
    """BFV: the largest ``|e + r|`` per coefficient of one fresh ciphertext, in units of ``q``'s
    integers (see the module docstring): 21.5 symmetric, ``21*(2N+1) + 0.5`` public key."""
    if p.encryption is Encryption.SYMMETRIC:
        return _CBD_BOUND + 0.5
    return _CBD_BOUND * (2 * p.poly_modulus_degree + 1) + 0.5


def _data_modulus_log2(p: HEParams) -> float:
    primes = sealapi.CoeffModulus.Create(p.poly_modulus_degree, list(p.coeff_mod_bit_sizes))
    return sum(math.log2(m.value()) for m in primes[:-1])


def _noise_problems(p: HEParams) -> list[str]:
    """BFV: ``2 * max_sites * B < q/t``, with the real primes (see the module docstring)."""
    t = sealapi.PlainModulus.Batching(p.poly_modulus_degree, p.plain_modulus_bits).value()
    room = _data_modulus_log2(p) - math.log2(t)
    need = 1 + math.log2(max(p.max_sites, 1) * fresh_noise_bound(p))
    if need < room:
        return []
    return [
        f"a sum of max_sites={p.max_sites} {p.encryption.value} ciphertexts may not decrypt exactly: "
        f"it needs log2(q/t) > {need:.2f} bits of noise room, the data modulus gives {room:.2f}; "
        f"use params_for_sites({p.max_sites}) (what `fedcore keys init --max-sites` does), larger "
        "coeff_mod_bit_sizes, or a smaller max_sites"
    ]


def params_for_sites(max_sites: int, base: HEParams | None = None) -> HEParams:
    """``base`` (default :data:`DEFAULT_PARAMS`) for a federation of up to ``max_sites`` sites.

    The plain modulus and resolution stay those of ``base`` (so each site's range,
    ``max_abs_value``, shrinks as ``1/max_sites``); the data primes grow, one bit at a time from
    ``base``'s, until ``max_sites`` fresh ciphertexts sum exactly, and the ring grows when 128-bit
    security needs it. ``ConfigError`` names what to change when nothing fits.
    """
    base = DEFAULT_PARAMS if base is None else base
    if isinstance(max_sites, bool) or not isinstance(max_sites, int) or max_sites < 1:
        raise ConfigError(f"max_sites must be an integer >= 1, got {max_sites!r}")
    if base.scheme is Scheme.CKKS:
        return replace(base, max_sites=max_sites)
    room = base.plain_modulus_bits - 1 - math.ceil(math.log2(max_sites))
    if base.frac_bits > room:
        raise ConfigError(
            f"max_sites={max_sites} leaves {room} fractional bits under the {base.plain_modulus_bits}-bit "
            f"plain modulus, fewer than frac_bits={base.frac_bits}; lower frac_bits, raise "
            "plain_modulus_bits, or use fewer sites per key set"
        )
    start = max(base.coeff_mod_bit_sizes[:-1])
    for n in (r for r in _RINGS if r >= base.poly_modulus_degree):
        for primes in (1, 2, 3):
            for bits in range(start, 61):
                sizes = (bits,) * (primes + 1)
                if sum(sizes) > _max_bits(n):
                    break
                try:
                    return replace(
                        base, poly_modulus_degree=n, coeff_mod_bit_sizes=sizes, max_sites=max_sites
                    )
                except ConfigError:
                    continue  # not enough noise room yet: one more bit
    raise ConfigError(
        f"no BFV ring up to N=32768 sums {max_sites} {base.encryption.value} ciphertexts exactly with a "
        f"{base.plain_modulus_bits}-bit plain modulus; use fewer sites per key set or a smaller plain modulus"
    )


def check_max_sites(params: HEParams, num_sites: int, *, keyset_id: str, who: str) -> None:
    """Refuse, before anyone trains, a job whose HE sum could hold more updates than the key set
    sums exactly; ``who`` says where the check runs (e.g. ``"the coordinator"``)."""
    if num_sites > params.max_sites:
        raise ConfigError(
            f"{who}: the job would sum up to {num_sites} sites' encrypted updates but HE key set "
            f"{keyset_id} sums at most max_sites={params.max_sites}; re-run the key ceremony with "
            f"`fedcore keys init --max-sites {1 << (num_sites - 1).bit_length()} --out KEYS` and give "
            "every site the new secret.ctx, the coordinator the new public.ctx"
        )


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

"""Shamir secret sharing of 32-byte secrets over GF(p), vectorised with ``galois`` (Shamir 1979).

A 32-byte secret (a mask seed, an X25519 private key) is cut into ``CHUNKS`` = 11 digits of 24 bits
(264 bits >= 256), each an element of the prime field GF(p), ``p = 2^25 - 39``; every digit is
shared with its own random polynomial of degree ``threshold - 1`` (coefficients uniform in GF(p)
from ``os.urandom``), all evaluated at the same holder indices 1..holders. A share is the 11
evaluations (``SHARE_BYTES`` = 44 bytes, u32 little-endian each).

Security (unchanged from one polynomial over GF(2^128)): each digit's polynomial has independent
uniform coefficients, so any ``threshold - 1`` shares are uniform and independent of every digit,
hence of the secret (information-theoretically). Integrity is not Shamir's business: shares travel
sealed (``sealed.py``) and a reconstruction is checked against the owner's commitment.

Why this field: the field arithmetic is ``galois``'s (a maintained NumPy extension; nothing
hand-rolled here). With ``p < 2^25`` a dot product of up to ~2^13 terms stays inside int64, so
``galois`` evaluates every polynomial of a split, and every reconstruction of a round, as one matrix
product. Reconstruction is Lagrange interpolation at 0 with weights computed once per set of holder
indices (``combine_many``): at 100 sites and threshold 66 a site's split and the coordinator's
~100 reconstructions take milliseconds, where pycryptodome's pure-Python GF(2^128) took ~1 s and
~30-45 s (``benchmarks/results/secagg_core.json``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedcore.errors import SecAggError

__all__ = ["CHUNKS", "PRIME", "SHARE_BYTES", "combine", "combine_many", "split", "split_many"]

PRIME = (1 << 25) - 39
"""The field's order: the largest prime below 2^25."""
_DIGIT_BITS = 24
CHUNKS = 11
SHARE_BYTES = 4 * CHUNKS
_SECRET_BYTES = 32


@functools.cache
def _field() -> Any:
    """GF(PRIME) (built once per process: ``galois`` compiles its ufuncs on first use)."""
    import galois

    return galois.GF(PRIME)


def _digits(secret: bytes) -> list[int]:
    if len(secret) != _SECRET_BYTES:
        raise SecAggError(f"a shared secret must be {_SECRET_BYTES} bytes, got {len(secret)}")
    value = int.from_bytes(secret, "little")
    return [(value >> (_DIGIT_BITS * i)) & ((1 << _DIGIT_BITS) - 1) for i in range(CHUNKS)]


def _secret(digits: Sequence[int]) -> bytes:
    if any(not 0 <= d < (1 << _DIGIT_BITS) for d in digits):
        raise SecAggError("the shares do not reconstruct a secret (a digit is out of range): a bad share")
    value = sum(int(d) << (_DIGIT_BITS * i) for i, d in enumerate(digits))
    if value >> (8 * _SECRET_BYTES):
        raise SecAggError("the shares do not reconstruct a 32-byte secret: a bad share")
    return value.to_bytes(_SECRET_BYTES, "little")


def _uniform(count: int) -> NDArray[np.int64]:
    """``count`` field elements uniform in [0, PRIME) from ``os.urandom`` (rejection sampling)."""
    out = np.empty(0, dtype=np.int64)
    while out.size < count:
        raw = np.frombuffer(os.urandom(4 * (count - out.size + 8)), dtype="<u4").astype(np.int64)
        raw &= (1 << 25) - 1
        out = np.concatenate([out, raw[raw < PRIME]])
    return out[:count]


def _check_sizes(threshold: int, holders: int) -> None:
    if not 1 <= threshold <= holders < PRIME:
        raise SecAggError(f"Shamir needs 1 <= threshold <= holders, got {threshold} of {holders}")


def split_many(
    secrets: Sequence[bytes], *, threshold: int, holders: int
) -> list[tuple[int, tuple[bytes, ...]]]:
    """Shares of every secret for holders 1..``holders``: ``(index, (share of secret 0, ...))``."""
    _check_sizes(threshold, holders)
    gf = _field()
    digits = np.array([d for s in secrets for d in _digits(s)], dtype=np.int64)  # secret-major
    coeffs = gf(_uniform(threshold * digits.size).reshape(threshold, digits.size))
    coeffs[0] = gf(digits)
    points = gf(np.arange(1, holders + 1, dtype=np.int64))
    vander = points[:, None] ** np.arange(threshold)  # holders x threshold
    values = np.asarray(vander @ coeffs, dtype="<u4")  # holders x (secrets * CHUNKS)
    out = []
    for h in range(holders):
        row = values[h].reshape(len(secrets), CHUNKS)
        out.append((h + 1, tuple(r.tobytes() for r in row)))
    return out


def split(secret: bytes, *, threshold: int, holders: int) -> list[tuple[int, bytes]]:
    """``holders`` shares ``(index, SHARE_BYTES)`` of a 32-byte ``secret``; any ``threshold`` recover it."""
    return [(i, shares[0]) for i, shares in split_many([secret], threshold=threshold, holders=holders)]


@functools.lru_cache(maxsize=1024)
def _lagrange_at_zero(indices: tuple[int, ...]) -> Any:
    """Weights l_i with f(0) = sum_i l_i f(x_i): l_i = prod_{j != i} x_j / (x_j - x_i), in GF(p)."""
    gf = _field()
    x = gf(np.array(indices, dtype=np.int64))
    diff = x[None, :] - x[:, None]
    diff[np.diag_indices(len(indices))] = gf(1)
    return (np.multiply.reduce(x) / x) / np.multiply.reduce(diff, axis=1)


def _parse(shares: Sequence[tuple[int, bytes]], threshold: int) -> tuple[tuple[int, ...], NDArray[np.int64]]:
    """The first ``threshold`` shares (by index) as (indices, threshold x CHUNKS digits)."""
    unique = dict(sorted(shares))
    if len(unique) != len(shares):
        raise SecAggError("duplicate share indices: each holder gives one share")
    if len(unique) < threshold:
        raise SecAggError(f"{len(unique)} shares cannot recover a secret shared with threshold {threshold}")
    if any(len(s) != SHARE_BYTES or not 1 <= i < PRIME for i, s in unique.items()):
        raise SecAggError(f"a share must be (index >= 1, {SHARE_BYTES} bytes)")
    use = list(unique.items())[:threshold]
    rows = np.frombuffer(b"".join(s for _, s in use), dtype="<u4").astype(np.int64)
    if (rows >= PRIME).any():
        raise SecAggError("a share holds a value outside the field: a bad share")
    return tuple(i for i, _ in use), rows.reshape(threshold, CHUNKS)


def combine_many(shares: Mapping[str, Sequence[tuple[int, bytes]]], *, threshold: int) -> dict[str, bytes]:
    """Every owner's secret from ``threshold`` of its shares; owners whose first ``threshold``
    holder indices agree are reconstructed together (one matrix product per set of indices)."""
    groups: dict[tuple[int, ...], list[tuple[str, NDArray[np.int64]]]] = {}
    for owner, owned in shares.items():
        indices, rows = _parse(owned, threshold)
        groups.setdefault(indices, []).append((owner, rows))
    gf, out = _field(), {}
    for indices, members in groups.items():
        stacked = gf(np.concatenate([rows for _, rows in members], axis=1))  # threshold x (owners*CHUNKS)
        at_zero = np.asarray(_lagrange_at_zero(indices) @ stacked, dtype=np.int64)
        for k, (owner, _) in enumerate(members):
            out[owner] = _secret(at_zero[k * CHUNKS : (k + 1) * CHUNKS].tolist())
    return out


def combine(shares: Sequence[tuple[int, bytes]], *, threshold: int) -> bytes:
    """The secret from ``threshold`` of its shares (extra shares are ignored; fewer raise)."""
    return combine_many({"": shares}, threshold=threshold)[""]

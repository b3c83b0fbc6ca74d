"""Shamir secret sharing of 32-byte secrets with pycryptodome (Shamir 1979; GF(2^128)).

pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir`` shares 16-byte secrets over GF(2^128). A
32-byte secret (a mask seed, an X25519 private key) is shared as two independent 16-byte halves,
each with the same threshold and the same holder indices; a share is the two half-shares
concatenated (32 bytes). Fewer than ``threshold`` shares of a half are independent of that half
(information-theoretically), so they say nothing about the secret.

Holders are numbered 1..holders; the caller maps its holders (a site's sorted neighbours) to indices.
"""

from __future__ import annotations

from collections.abc import Sequence

from Crypto.Protocol.SecretSharing import Shamir

from fedcore.errors import SecAggError

__all__ = ["combine", "split"]

_HALF = 16


def split(secret: bytes, *, threshold: int, holders: int) -> list[tuple[int, bytes]]:
    """``holders`` shares ``(index, 32 bytes)`` of a 32-byte ``secret``; any ``threshold`` recover it."""
    if len(secret) != 2 * _HALF:
        raise SecAggError(f"a shared secret must be 32 bytes, got {len(secret)}")
    if not 1 <= threshold <= holders:
        raise SecAggError(f"Shamir needs 1 <= threshold <= holders, got {threshold} of {holders}")
    lo = Shamir.split(threshold, holders, secret[:_HALF], ssss=False)
    hi = Shamir.split(threshold, holders, secret[_HALF:], ssss=False)
    return [(i, a + b) for (i, a), (j, b) in zip(lo, hi, strict=True) if i == j]


def combine(shares: Sequence[tuple[int, bytes]], *, threshold: int) -> bytes:
    """The secret from ``threshold`` of its shares (extra shares are ignored; fewer raise)."""
    unique = dict(sorted(shares))
    if len(unique) != len(shares):
        raise SecAggError("duplicate share indices: each holder gives one share")
    if len(unique) < threshold:
        raise SecAggError(f"{len(unique)} shares cannot recover a secret shared with threshold {threshold}")
    if any(len(s) != 2 * _HALF or i < 1 for i, s in unique.items()):
        raise SecAggError("a share must be (index >= 1, 32 bytes)")
    use = list(unique.items())[:threshold]
    lo = Shamir.combine([(i, s[:_HALF]) for i, s in use], ssss=False)
    hi = Shamir.combine([(i, s[_HALF:]) for i, s in use], ssss=False)
    return lo + hi

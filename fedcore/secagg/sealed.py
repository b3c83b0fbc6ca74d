"""Shares in transit: AES-256-GCM under a key agreed by the two sites (Bonawitz et al. 2017, Sec. 4).

The coordinator relays every share but can read none: the key is HKDF over the X25519 agreement of
the two sites' fresh encryption keys (``derive_key(..., purpose="share")``), and the associated data
binds (job, round, sender, receiver), so a ciphertext replayed into another round or redirected to
another site fails to authenticate. Both directions of a pair share one key, so each ciphertext has
its own random 96-bit nonce, sent in front of it.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedcore.errors import SecAggError
from fedcore.secagg.keys import agree, derive_key, frame
from fedcore.secagg.shamir import SHARE_BYTES

__all__ = ["HeldShare", "open_share", "seal_share"]

_PLAIN = struct.Struct(f">I{SHARE_BYTES}s{SHARE_BYTES}s")
HeldShare = tuple[int, bytes, bytes]  # (holder index, share of the self-mask seed, share of the mask key)


def _key(enc_private: bytes, peer_public: bytes, *, job_id: str, round_: int, a: str, b: str) -> AESGCM:
    secret = agree(enc_private, peer_public)
    return AESGCM(derive_key(secret, purpose="share", job_id=job_id, round_=round_, a=a, b=b))


def seal_share(
    share: HeldShare,
    *,
    enc_private: bytes,
    peer_public: bytes,
    job_id: str,
    round_: int,
    sender: str,
    receiver: str,
) -> bytes:
    """``nonce || AES-GCM(index, seed share, key share)`` for ``receiver``."""
    index, seed_share, key_share = share
    aead = _key(enc_private, peer_public, job_id=job_id, round_=round_, a=sender, b=receiver)
    nonce = os.urandom(12)
    plain = _PLAIN.pack(index, seed_share, key_share)
    return nonce + aead.encrypt(nonce, plain, frame("share", job_id, round_, sender, receiver))


def open_share(
    data: bytes,
    *,
    enc_private: bytes,
    peer_public: bytes,
    job_id: str,
    round_: int,
    sender: str,
    receiver: str,
) -> HeldShare:
    """Decrypt and authenticate a share from ``sender``; anything else raises ``SecAggError``."""
    aead = _key(enc_private, peer_public, job_id=job_id, round_=round_, a=sender, b=receiver)
    try:
        plain = aead.decrypt(data[:12], data[12:], frame("share", job_id, round_, sender, receiver))
    except (InvalidTag, ValueError) as err:
        raise SecAggError(
            f"the share from {sender!r} does not authenticate for "
            f"({job_id!r}, round {round_}, {receiver!r}); "
            "refused (tampered, replayed or redirected)"
        ) from err
    if len(plain) != _PLAIN.size:
        raise SecAggError(f"the share from {sender!r} has {len(plain)} bytes, expected {_PLAIN.size}")
    index, seed_share, key_share = _PLAIN.unpack(plain)
    return int(index), bytes(seed_share), bytes(key_share)

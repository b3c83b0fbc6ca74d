"""Who is a member, what a site signs, and the keys of one round (RFC 8032, RFC 7748, RFC 5869).

Once per job (out of band, like the CA certificate): every site holds a long-term Ed25519 signing
key (``Identity``) and the federation's member list (``Members``: site name -> Ed25519 public key),
which it reads from its own site file, never from the coordinator.

Fresh per round: two X25519 key pairs per site (``RoundKeys``): one agrees the AES-GCM keys that
carry Shamir shares between two sites, the other the seeds of their pairwise masks. Keys are fresh
each round because a dropped site's mask key is reconstructed by the others: were it kept for the
whole job, its pairwise masks of *every earlier round* would be exposed too, while its self-masks
of those rounds were already revealed (it survived them), so its earlier inputs would leak.

Everything signed or fed to the KDF is ``frame(...)``: each part length-prefixed, under a domain
tag, so no two different tuples give the same bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from fedcore.errors import ConfigError, SecAggError

__all__ = [
    "DOMAIN",
    "Identity",
    "Members",
    "RoundKeys",
    "agree",
    "derive_key",
    "digest",
    "frame",
    "x25519_public",
]

DOMAIN = b"fedcore-secagg/v1"
Purpose = Literal["mask", "share"]


def frame(*parts: bytes | str | int) -> bytes:
    """Unambiguous bytes of ``parts``: each tagged by type and length-prefixed (u32), after DOMAIN."""
    out = [DOMAIN]
    for part in parts:
        if isinstance(part, bool):
            raise TypeError("frame() takes bytes, str or int, not bool")
        if isinstance(part, int):
            raw, tag = part.to_bytes(8, "big", signed=True), b"i"
        elif isinstance(part, str):
            raw, tag = part.encode(), b"s"
        else:
            raw, tag = bytes(part), b"b"
        out += [tag, struct.pack(">I", len(raw)), raw]
    return b"".join(out)


def digest(*parts: bytes | str | int) -> bytes:
    """SHA-256 of ``frame(*parts)``."""
    return hashlib.sha256(frame(*parts)).digest()


@dataclass(frozen=True)
class Identity:
    """A site's name and long-term Ed25519 private key (32 raw bytes; never printed)."""

    name: str
    private_key: bytes = field(repr=False)

    @classmethod
    def generate(cls, name: str) -> Identity:
        raw = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return cls(name, raw)

    @property
    def public_key(self) -> bytes:
        key = Ed25519PrivateKey.from_private_bytes(self.private_key).public_key()
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.private_key).sign(message)


@dataclass(frozen=True)
class Members:
    """The federation's members as THIS site knows them: name -> Ed25519 public key (32 bytes)."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        problems = [f"{n!r}: public key must be 32 bytes, got {len(k)}" for n, k in self.keys if len(k) != 32]
        names = [n for n, _ in self.keys]
        if len(set(names)) != len(names):
            problems.append(f"duplicate member names in {sorted(names)}")
        if problems:
            raise ConfigError("member list: " + "; ".join(problems) + "; fix the site file's member list")

    @classmethod
    def of(cls, keys: Mapping[str, bytes]) -> Members:
        return cls(tuple(sorted((str(n), bytes(k)) for n, k in keys.items())))

    def __contains__(self, name: object) -> bool:
        return any(n == name for n, _ in self.keys)

    def unknown(self, names: Iterable[str]) -> list[str]:
        """The names that are not members (sorted)."""
        known = {n for n, _ in self.keys}
        return sorted(set(names) - known)

    def verify(self, name: str, message: bytes, signature: bytes, *, what: str) -> None:
        """Raise ``SecAggError`` unless ``signature`` is ``name``'s Ed25519 signature of ``message``."""
        key = dict(self.keys).get(name)
        if key is None:
            raise SecAggError(f"{what}: {name!r} is not in this site's member list; refused")
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
        except (InvalidSignature, ValueError) as err:
            raise SecAggError(f"{what}: signature of {name!r} does not verify; refused") from err


def _x25519_raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def x25519_public(private_key: bytes) -> bytes:
    """The X25519 public key (32 bytes) of a raw private key."""
    pub = X25519PrivateKey.from_private_bytes(private_key).public_key()
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class RoundKeys:
    """A site's two fresh X25519 key pairs of one round (raw 32-byte keys; secrets never printed)."""

    enc_private: bytes = field(repr=False)
    mask_private: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> RoundKeys:
        return cls(_x25519_raw(X25519PrivateKey.generate()), _x25519_raw(X25519PrivateKey.generate()))

    @property
    def enc_public(self) -> bytes:
        return x25519_public(self.enc_private)

    @property
    def mask_public(self) -> bytes:
        return x25519_public(self.mask_private)


def agree(private_key: bytes, public_key: bytes) -> bytes:
    """X25519 shared secret; a low-order or malformed public key raises ``SecAggError``."""
    try:
        priv = X25519PrivateKey.from_private_bytes(private_key)
        return priv.exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError as err:
        raise SecAggError(f"X25519 agreement failed ({err}); the peer's public key is invalid") from err


def derive_key(secret: bytes, *, purpose: Purpose, job_id: str, round_: int, a: str, b: str) -> bytes:
    """HKDF-SHA256 (RFC 5869) of an X25519 secret into 32 bytes bound to (purpose, job, round, pair).

    The pair is ordered (``min``, ``max``), so both sites derive the same key.
    """
    lo, hi = sorted((a, b))
    info = frame(purpose, job_id, round_, lo, hi)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)

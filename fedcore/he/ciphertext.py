"""The wire type of an encrypted update or sum: :class:`EncryptedUpdate` and its byte format.

Wire format of :meth:`EncryptedUpdate.to_bytes` (version 2: version 1 and a ``trailer`` count)::

    b"FCHEUP" | u16 version | u32 header length | JSON header | SHA-256(header) | ciphertexts

The header holds the key-set id, shapes, weight, ciphertext lengths and a BLAKE2b digest of each
ciphertext: truncation or a flipped byte raises ``CiphertextError``. Digests detect damage, not a
forger (who can recompute them); integrity against an active attacker is the transport's job (TLS).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from fedcore.errors import CiphertextError
from fedcore.he.params import Scheme

__all__ = ["EncryptedUpdate"]


_MAGIC = b"FCHEUP"


_VERSION = 2


_PREFIX = struct.Struct(">6sHI")


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class EncryptedUpdate:
    """One site's encrypted, weighted update, or the coordinator's encrypted sum of several.

    ``weight`` is plaintext (the sum of the weights inside); ``num_sites`` counts the updates
    summed. Both are the sender's word (a coordinator can rewrite a header): a site that decrypts
    relies on the ``trailer`` instead. ``ciphertexts`` are TenSEAL-serialized vectors of ``slots``
    values each (the last may be shorter), holding ``weight_i * value`` of the flattened arrays in
    model order, then ``trailer`` integer slots encrypted with them (a training update: its weight
    and its site's marker; a statistics answer: its marker), which add up with the values.
    """

    keyset_id: str
    scheme: Scheme
    shapes: tuple[tuple[int, ...], ...]
    weight: float
    num_sites: int
    slots: int
    ciphertexts: tuple[bytes, ...]
    trailer: int = 0

    @property
    def num_values(self) -> int:
        """Parameters carried (the sum of the shapes' sizes), the trailer not included."""
        return sum(math.prod(s) for s in self.shapes)

    @property
    def num_slots(self) -> int:
        """Slots used in all: the values and the trailer."""
        return self.num_values + self.trailer

    @property
    def num_ciphertexts(self) -> int:
        """Ciphertexts carried."""
        return len(self.ciphertexts)

    @property
    def ciphertext_bytes(self) -> int:
        """Bytes of ciphertext (excluding the small header)."""
        return sum(len(c) for c in self.ciphertexts)

    def to_bytes(self) -> bytes:
        """Versioned, checksummed wire form; inverse of :meth:`from_bytes`."""
        header = json.dumps(
            {
                "keyset_id": self.keyset_id,
                "scheme": self.scheme.value,
                "shapes": [list(s) for s in self.shapes],
                "weight": self.weight,
                "num_sites": self.num_sites,
                "slots": self.slots,
                "trailer": self.trailer,
                "ct_lengths": [len(c) for c in self.ciphertexts],
                "ct_digests": [_digest(c) for c in self.ciphertexts],
            }
        ).encode()
        prefix = _PREFIX.pack(_MAGIC, _VERSION, len(header))
        return b"".join((prefix, header, hashlib.sha256(header).digest(), *self.ciphertexts))

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedUpdate:
        """Parse :meth:`to_bytes` output; ``CiphertextError`` if truncated, tampered or foreign."""
        header, offset = _parse_header(bytes(data))
        lengths, digests = header["ct_lengths"], header["ct_digests"]
        if len(data) - offset != sum(lengths):
            raise CiphertextError(
                f"encrypted update is truncated or padded: {len(data) - offset} ciphertext bytes, "
                f"header says {sum(lengths)}; resend the update"
            )
        cts = []
        for i, (n, want) in enumerate(zip(lengths, digests, strict=True)):
            ct = bytes(data[offset : offset + n])
            if _digest(ct) != want:
                raise CiphertextError(
                    f"ciphertext {i} of {len(lengths)} fails its checksum "
                    "(corrupted in transit); resend the update"
                )
            cts.append(ct)
            offset += n
        return _build(header, tuple(cts))


def _parse_header(data: bytes) -> tuple[dict[str, Any], int]:
    if len(data) < _PREFIX.size:
        raise CiphertextError(f"encrypted update is {len(data)} bytes, too short for a header")
    magic, version, hlen = _PREFIX.unpack_from(data)
    if magic != _MAGIC:
        raise CiphertextError(f"not a fedcore encrypted update (magic {magic!r})")
    if version != _VERSION:
        raise CiphertextError(
            f"encrypted update format v{version}; this fedcore reads v{_VERSION}"
            " only: run the same fedcore version at every site"
        )
    end = _PREFIX.size + hlen
    raw, digest = data[_PREFIX.size : end], data[end : end + 32]
    if len(digest) != 32 or hashlib.sha256(raw).digest() != digest:
        raise CiphertextError("encrypted update header is truncated or fails its checksum")
    try:
        header: dict[str, Any] = json.loads(raw)
    except ValueError as err:
        raise CiphertextError(f"encrypted update header is not JSON: {err}") from err
    return header, end + 32


def _build(header: dict[str, Any], cts: tuple[bytes, ...]) -> EncryptedUpdate:
    try:
        update = EncryptedUpdate(
            keyset_id=str(header["keyset_id"]),
            scheme=Scheme(header["scheme"]),
            shapes=tuple(tuple(int(d) for d in s) for s in header["shapes"]),
            weight=float(header["weight"]),
            num_sites=int(header["num_sites"]),
            slots=int(header["slots"]),
            ciphertexts=cts,
            trailer=int(header["trailer"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CiphertextError(f"encrypted update header is malformed: {err!r}") from err
    expected = math.ceil(update.num_slots / update.slots) if update.slots > 0 else -1
    if update.trailer < 0 or expected != update.num_ciphertexts:
        raise CiphertextError(
            f"header inconsistent: {update.num_slots} values in "
            f"{update.num_ciphertexts} ciphertexts of {update.slots} slots"
        )
    return update

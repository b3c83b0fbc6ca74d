"""The messages of one SecAgg+ round, in order (Bell et al. 2020, Alg. 3-4; Bonawitz et al. 2017, Fig. 4).

====  ======================  =======================  ============================================
step  coordinator -> site     site -> coordinator      what the site checks before it answers
====  ======================  =======================  ============================================
0     ``RoundRequest``        ``KeyAdvertisement``     every participant is in ITS member list;
                                                       sizes within its policy
1     ``KeyList``             ``ShareBundle``          every advertisement is signed by a member
                                                       over the SAME round view
2     ``ShareDelivery``       ``MaskedInput``          shares decrypt and authenticate; enough
                                                       neighbours shared
3     ``SurvivorRequest``     ``SurvivorSignature``    it is a survivor; the set is large enough;
                                                       it signs one set per round, ever
4     ``UnmaskRequest``       ``UnmaskReply``          a quorum of members signed THIS set
====  ======================  =======================  ============================================

Every message is a frozen dataclass with ``to_bytes()``/``from_bytes()`` (``fedcore.secagg.wire``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedcore.secagg.keys import digest
from fedcore.secagg.wire import Record

__all__ = [
    "KeyAdvertisement",
    "KeyList",
    "MaskedInput",
    "RoundRequest",
    "ShareBundle",
    "ShareDelivery",
    "SurvivorRequest",
    "SurvivorSignature",
    "UnmaskReply",
    "UnmaskRequest",
    "survivors_bytes",
]

Pairs = tuple[tuple[str, bytes], ...]
Shares = tuple[tuple[str, int, bytes], ...]  # (owner, holder index, 32-byte share)


@dataclass(frozen=True)
class RoundRequest(Record):
    """Step 0: the coordinator's proposal. ``degree == len(participants) - 1`` is the complete graph."""

    KIND = "secagg.round_request"
    job_id: str
    round: int
    participants: tuple[str, ...]
    degree: int
    modulus_bits: int
    length: int

    def view_digest(self) -> bytes:
        """What every signature of the round is bound to (sites sign their OWN view)."""
        return digest(
            "view", self.job_id, self.round, self.degree, self.modulus_bits, self.length, *self.participants
        )


@dataclass(frozen=True)
class KeyAdvertisement(Record):
    """Step 0 reply: a site's fresh public keys, its thresholds and its self-mask commitment, signed."""

    KIND = "secagg.key_advertisement"
    job_id: str
    round: int
    site: str
    enc_public: bytes
    mask_public: bytes
    share_threshold: int
    quorum: int
    self_commitment: bytes
    signature: bytes

    def signed_bytes(self, view_digest: bytes) -> bytes:
        """Bytes the signature covers, under the verifier's own ``view_digest``."""
        return digest(
            "advertise",
            view_digest,
            self.site,
            self.enc_public,
            self.mask_public,
            self.share_threshold,
            self.quorum,
            self.self_commitment,
        )


@dataclass(frozen=True)
class KeyList(Record):
    """Step 1: every advertisement the coordinator received (the set U1)."""

    KIND = "secagg.key_list"
    job_id: str
    round: int
    advertisements: tuple[KeyAdvertisement, ...]


@dataclass(frozen=True)
class ShareBundle(Record):
    """Step 1 reply: AES-GCM ciphertexts of the sender's shares, one per neighbour (receiver, ct)."""

    KIND = "secagg.share_bundle"
    job_id: str
    round: int
    sender: str
    ciphertexts: Pairs


@dataclass(frozen=True)
class ShareDelivery(Record):
    """Step 2: the ciphertexts addressed to ``receiver`` (sender, ct); the senders form U2's pool."""

    KIND = "secagg.share_delivery"
    job_id: str
    round: int
    receiver: str
    ciphertexts: Pairs


@dataclass(frozen=True, eq=False)
class MaskedInput(Record):
    """Step 2 reply: the site's vector plus its self-mask and pairwise masks, mod 2^k."""

    KIND = "secagg.masked_input"
    job_id: str
    round: int
    site: str
    vector: NDArray[np.unsignedinteger]


@dataclass(frozen=True)
class SurvivorRequest(Record):
    """Step 3: the survivor set U3 (sorted) the coordinator wants unmasked."""

    KIND = "secagg.survivor_request"
    job_id: str
    round: int
    survivors: tuple[str, ...]


@dataclass(frozen=True)
class SurvivorSignature(Record):
    """Step 3 reply: the site's Ed25519 signature over (its round view, U3)."""

    KIND = "secagg.survivor_signature"
    job_id: str
    round: int
    site: str
    signature: bytes


def survivors_bytes(view_digest: bytes, survivors: tuple[str, ...]) -> bytes:
    """What a survivor signature covers."""
    return digest("survivors", view_digest, *survivors)


@dataclass(frozen=True)
class UnmaskRequest(Record):
    """Step 4: U3 again, with the survivors' signatures on it (site, signature)."""

    KIND = "secagg.unmask_request"
    job_id: str
    round: int
    survivors: tuple[str, ...]
    signatures: Pairs


@dataclass(frozen=True)
class UnmaskReply(Record):
    """Step 4 reply: shares of survivors' self-mask seeds and of dropped sites' mask keys."""

    KIND = "secagg.unmask_reply"
    job_id: str
    round: int
    site: str
    self_mask_shares: Shares
    mask_key_shares: Shares

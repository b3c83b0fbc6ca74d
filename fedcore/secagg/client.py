"""A site's side of one SecAgg+ round (Bell et al. 2020, malicious-server variant): five steps.

Each step takes the site's policy and identity, its ``ClientState`` and the coordinator's message,
checks the message (see ``fedcore.secagg.messages``), and returns the next state and the reply.
A step asked out of order, twice, or for another job or round raises ``SecAggError`` and reveals
nothing. The state is data (``to_bytes``/``from_bytes``; it holds this round's secrets, so it is
kept only in the site's own state folder) and records the one survivor set the site signed, so a
replayed or second unmasking request for a round is refused, also after a restart.

Reveal rule (Bonawitz et al. 2017, Sec. 4): for every site whose shares this site holds, it reveals
the share of the self-mask seed if that site is a signed survivor, else the share of its mask key,
never both, and only once a quorum of members signed the same survivor set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from fedcore.errors import SecAggError
from fedcore.secagg import shamir
from fedcore.secagg.graph import graph_seed, neighbours
from fedcore.secagg.keys import Identity, RoundKeys, agree, derive_key, digest, x25519_public
from fedcore.secagg.messages import (
    KeyAdvertisement,
    KeyList,
    MaskedInput,
    RoundRequest,
    ShareBundle,
    ShareDelivery,
    SurvivorRequest,
    SurvivorSignature,
    UnmaskReply,
    UnmaskRequest,
    survivors_bytes,
)
from fedcore.secagg.policy import SecAggPolicy, round_params
from fedcore.secagg.prg import apply_masks, word_dtype
from fedcore.secagg.sealed import open_share, seal_share
from fedcore.secagg.wire import Record

__all__ = [
    "ClientState",
    "mask_input",
    "reveal_shares",
    "self_commitment",
    "share_keys",
    "sign_survivors",
    "start_round",
]

Held = tuple[tuple[str, int, bytes, bytes], ...]  # (owner, index, seed share, key share)


@dataclass(frozen=True)
class ClientState(Record):
    """Where one site is in one round. Holds secrets: store it only in the site's own folder."""

    KIND = "secagg.client_state"
    site: str
    request: RoundRequest
    stage: str
    quorum: int
    share_threshold: int
    enc_private: bytes = field(repr=False)
    mask_private: bytes = field(repr=False)
    self_seed: bytes = field(repr=False)
    peers: tuple[KeyAdvertisement, ...] = ()
    held: Held = field(default=(), repr=False)
    survivors: tuple[str, ...] = ()


def self_commitment(job_id: str, round_: int, site: str, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed (lets the coordinator check a reconstruction)."""
    return digest("self-commit", job_id, round_, site, seed)


def _expect(state: ClientState, stage: str, job_id: str, round_: int, what: str) -> None:
    req = state.request
    if (job_id, round_) != (req.job_id, req.round):
        raise SecAggError(
            f"{what} for job {job_id!r} round {round_}, this state is {req.job_id!r} round {req.round}"
        )
    if state.stage != stage:
        raise SecAggError(
            f"{what} refused: this site is at step {state.stage!r} of the round, not {stage!r} (replay?)"
        )


def _my_neighbours(state: ClientState) -> tuple[str, ...]:
    req = state.request
    seed = graph_seed(req.job_id, req.round, req.participants, req.degree)
    return neighbours(req.participants, degree=req.degree, seed=seed)[state.site]


def start_round(
    policy: SecAggPolicy, identity: Identity, request: RoundRequest, *, existing: ClientState | None = None
) -> tuple[ClientState, KeyAdvertisement]:
    """Step 0: check the proposal, make fresh keys and a self-mask seed, sign the advertisement.

    ``existing``: the state this site already holds for the job, if any; a second start of the same
    round is refused (two runs of one round could reveal the difference of two sums).
    """
    if existing is not None and (existing.request.job_id, existing.request.round) == (
        request.job_id,
        request.round,
    ):
        raise SecAggError(
            f"round {request.round} of job {request.job_id!r} was already started here; refused"
        )
    params = round_params(policy, identity.name, request)
    keys, seed = RoundKeys.generate(), os.urandom(32)
    ad = KeyAdvertisement(
        request.job_id,
        request.round,
        identity.name,
        keys.enc_public,
        keys.mask_public,
        params.share_threshold,
        params.quorum,
        self_commitment(request.job_id, request.round, identity.name, seed),
        b"",
    )
    ad = replace(ad, signature=identity.sign(ad.signed_bytes(request.view_digest())))
    state = ClientState(
        identity.name,
        request,
        "advertised",
        params.quorum,
        params.share_threshold,
        keys.enc_private,
        keys.mask_private,
        seed,
    )
    return state, ad


def _verified_peers(
    policy: SecAggPolicy, state: ClientState, key_list: KeyList
) -> dict[str, KeyAdvertisement]:
    req, view = state.request, state.request.view_digest()
    peers: dict[str, KeyAdvertisement] = {}
    for ad in key_list.advertisements:
        if (
            (ad.job_id, ad.round) != (req.job_id, req.round)
            or ad.site not in req.participants
            or ad.site in peers
        ):
            raise SecAggError(
                f"advertisement of {ad.site!r}: another round, not a participant, or repeated; refused"
            )
        policy.members.verify(ad.site, ad.signed_bytes(view), ad.signature, what="key advertisement")
        if len(ad.enc_public) != 32 or len(ad.mask_public) != 32:
            raise SecAggError(f"advertisement of {ad.site!r}: public keys must be 32 bytes; refused")
        peers[ad.site] = ad
    mine = peers.get(state.site)
    if mine is None or (mine.enc_public, mine.mask_public) != (
        x25519_public(state.enc_private),
        x25519_public(state.mask_private),
    ):
        raise SecAggError("the key list does not carry this site's own advertisement unchanged; refused")
    return peers


def share_keys(
    policy: SecAggPolicy, identity: Identity, state: ClientState, key_list: KeyList
) -> tuple[ClientState, ShareBundle]:
    """Step 1: verify every advertisement; Shamir-share the seed and mask key to live neighbours."""
    _expect(state, "advertised", key_list.job_id, key_list.round, "key list")
    peers = _verified_peers(policy, state, key_list)
    holders = [v for v in _my_neighbours(state) if v in peers]
    if len(holders) < state.share_threshold:
        raise SecAggError(
            f"only {len(holders)} neighbours advertised keys, this site's threshold is "
            f"{state.share_threshold}; refused"
        )
    shares = shamir.split_many(
        [state.self_seed, state.mask_private], threshold=state.share_threshold, holders=len(holders)
    )
    req, cts = state.request, []
    for v, (i, (s, k)) in zip(holders, shares, strict=True):
        ct = seal_share(
            (i, s, k),
            enc_private=state.enc_private,
            peer_public=peers[v].enc_public,
            job_id=req.job_id,
            round_=req.round,
            sender=identity.name,
            receiver=v,
        )
        cts.append((v, ct))
    new = replace(state, stage="shared", peers=tuple(peers[s] for s in sorted(peers)))
    return new, ShareBundle(req.job_id, req.round, identity.name, tuple(cts))


def _open_delivery(state: ClientState, delivery: ShareDelivery) -> Held:
    req, peers = state.request, {ad.site: ad for ad in state.peers}
    near, held = set(_my_neighbours(state)), list[tuple[str, int, bytes, bytes]]()
    for sender, ct in delivery.ciphertexts:
        if sender not in near or sender not in peers or any(h[0] == sender for h in held):
            raise SecAggError(f"a share from {sender!r}: not a live neighbour, or repeated; refused")
        i, s, k = open_share(
            ct,
            enc_private=state.enc_private,
            peer_public=peers[sender].enc_public,
            job_id=req.job_id,
            round_=req.round,
            sender=sender,
            receiver=state.site,
        )
        held.append((sender, i, s, k))
    return tuple(sorted(held))


def _check_values(values: NDArray[np.unsignedinteger], req: RoundRequest) -> None:
    dtype = word_dtype(req.modulus_bits)
    if values.dtype != dtype or values.shape != (req.length,):
        raise SecAggError(
            f"input must be {dtype} of shape ({req.length},), got {values.dtype} {values.shape}"
        )
    if req.modulus_bits < dtype.itemsize * 8 and values.size and int(values.max()) >> req.modulus_bits:
        raise SecAggError(f"input words must be < 2^{req.modulus_bits}; encode with fedcore.secagg.encoding")


def mask_input(
    state: ClientState, delivery: ShareDelivery, values: NDArray[np.unsignedinteger]
) -> tuple[ClientState, MaskedInput]:
    """Step 2: keep the shares sent to this site; mask ``values`` (encoded words) with its neighbours."""
    _expect(state, "shared", delivery.job_id, delivery.round, "share delivery")
    req = state.request
    if delivery.receiver != state.site:
        raise SecAggError(f"a delivery for {delivery.receiver!r} sent to {state.site!r}; refused")
    _check_values(values, req)
    held = _open_delivery(state, delivery)
    if len(held) < state.share_threshold:
        raise SecAggError(
            f"only {len(held)} neighbours sent shares, fewer than this site's threshold "
            f"{state.share_threshold}: "
            "its input would be masked by too few pairs; refused"
        )
    peers = {ad.site: ad for ad in state.peers}
    pairs = []
    for owner, *_ in held:
        secret = agree(state.mask_private, peers[owner].mask_public)
        seed = derive_key(secret, purpose="mask", job_id=req.job_id, round_=req.round, a=state.site, b=owner)
        pairs.append((seed, 1 if state.site < owner else -1))
    seeds = [(state.self_seed, 1), *pairs]
    vector = apply_masks(values, seeds=seeds, modulus_bits=req.modulus_bits)
    return replace(state, stage="masked", held=held), MaskedInput(req.job_id, req.round, state.site, vector)


def _check_survivors(state: ClientState, survivors: Sequence[str]) -> None:
    if list(survivors) != sorted(set(survivors)):
        raise SecAggError("the survivor set must be sorted and unique; refused")
    if state.site not in survivors:
        raise SecAggError(f"{state.site!r} is declared dropped in this round; it reveals nothing more")
    strangers = sorted(set(survivors) - {ad.site for ad in state.peers})
    if strangers:
        raise SecAggError(f"survivors {strangers} did not advertise keys this round; refused")
    if len(survivors) < state.quorum:
        raise SecAggError(
            f"{len(survivors)} survivors, this site requires at least {state.quorum}: a smaller sum could "
            "single out too few sites; refused"
        )
    holders = set(_my_neighbours(state)) & set(survivors)
    if len(holders) < state.share_threshold:
        raise SecAggError(
            f"only {len(holders)} of this site's share holders survive (< {state.share_threshold}); refused"
        )


def sign_survivors(
    identity: Identity, state: ClientState, request: SurvivorRequest
) -> tuple[ClientState, SurvivorSignature]:
    """Step 3: sign the survivor set, once per round (a second set, or the same again, is refused)."""
    _expect(state, "masked", request.job_id, request.round, "survivor request")
    _check_survivors(state, request.survivors)
    signature = identity.sign(survivors_bytes(state.request.view_digest(), request.survivors))
    new = replace(state, stage="signed", survivors=request.survivors)
    return new, SurvivorSignature(request.job_id, request.round, state.site, signature)


def reveal_shares(
    policy: SecAggPolicy, state: ClientState, request: UnmaskRequest
) -> tuple[ClientState, UnmaskReply]:
    """Step 4: with a quorum of member signatures on THE set this site signed, reveal one share per site."""
    _expect(state, "signed", request.job_id, request.round, "unmask request")
    if request.survivors != state.survivors:
        raise SecAggError(
            "the unmask request names another survivor set than the one this site signed "
            f"({len(request.survivors)} vs {len(state.survivors)} sites): a subset-sum attempt; refused"
        )
    signed = survivors_bytes(state.request.view_digest(), state.survivors)
    signers = [name for name, _ in request.signatures]
    if len(set(signers)) != len(signers) or not set(signers) <= set(state.survivors):
        raise SecAggError("survivor signatures must come once each from survivors; refused")
    for name, sig in request.signatures:
        policy.members.verify(name, signed, sig, what="survivor signature")
    if len(signers) < state.quorum:
        raise SecAggError(
            f"{len(signers)} survivors signed this set, this site requires {state.quorum}; refused"
        )
    seeds = tuple((o, i, s) for o, i, s, _ in state.held if o in state.survivors)
    keys = tuple((o, i, k) for o, i, _, k in state.held if o not in state.survivors)
    if {o for o, *_ in seeds} & {o for o, *_ in keys}:  # by construction; never both for one site
        raise SecAggError("internal: a site would get both its self-mask and its mask key revealed")
    reply = UnmaskReply(request.job_id, request.round, state.site, seeds, keys)
    return replace(state, stage="revealed"), reply

"""The coordinator's side of one SecAgg+ round: relay, collect, and unmask only the agreed sum.

The coordinator is the adversary of the threat model, so nothing a site's privacy rests on is
checked here (the sites check it); this side keeps the round honest for liveness: it accepts each
message once, from a site expected at that step, and refuses a site it declared dropped that
answers later. It holds the running sum of masked inputs (never one site's input unmasked), and
at the end subtracts each survivor's self-mask and the masks dropped sites shared with survivors.
``ServerState`` is data (``to_bytes``/``from_bytes``), checkpointed with the job.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from fedcore.errors import SecAggError
from fedcore.secagg import shamir
from fedcore.secagg.client import self_commitment
from fedcore.secagg.graph import graph_seed, neighbours
from fedcore.secagg.keys import agree, derive_key, x25519_public
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
)
from fedcore.secagg.prg import apply_masks, word_dtype
from fedcore.secagg.wire import Record

__all__ = [
    "ServerState",
    "add_advertisement",
    "add_masked",
    "add_reveal",
    "add_shares",
    "add_signature",
    "deliveries",
    "key_list",
    "open_round",
    "result",
    "survivor_request",
    "unmask_request",
]

Relayed = tuple[tuple[str, str, bytes], ...]  # (sender, receiver, ciphertext)
Revealed = tuple[tuple[str, str, str, int, bytes], ...]  # (holder, owner, "seed" | "key", index, share)


@dataclass(frozen=True, eq=False)
class ServerState(Record):
    """One round at the coordinator; ``stage`` names the messages it accepts next."""

    KIND = "secagg.server_state"
    request: RoundRequest
    stage: str
    advertisements: tuple[KeyAdvertisement, ...]
    relayed: Relayed
    sharers: tuple[str, ...]
    total: NDArray[np.unsignedinteger]
    contributors: tuple[str, ...]
    survivors: tuple[str, ...]
    signatures: tuple[tuple[str, bytes], ...]
    revealed: Revealed


def open_round(
    job_id: str, round_: int, participants: tuple[str, ...], *, degree: int, modulus_bits: int, length: int
) -> tuple[ServerState, RoundRequest]:
    """Step 0: the proposal to every participant (sorted); ``degree = n - 1`` is the complete graph."""
    req = RoundRequest(job_id, round_, tuple(sorted(set(participants))), degree, modulus_bits, length)
    total = np.zeros(length, dtype=word_dtype(modulus_bits))
    return ServerState(req, "keys", (), (), (), total, (), (), (), ()), req


def _accept(
    state: ServerState, stage: str, job_id: str, round_: int, site: str, allowed: tuple[str, ...]
) -> None:
    if (job_id, round_) != (state.request.job_id, state.request.round) or state.stage != stage:
        raise SecAggError(f"a {stage} message for ({job_id!r}, {round_}) at step {state.stage!r}; refused")
    if site not in allowed:
        raise SecAggError(f"{site!r} is not expected at step {stage!r} (dropped or unknown); refused")


def add_advertisement(state: ServerState, ad: KeyAdvertisement) -> ServerState:
    known = tuple(a.site for a in state.advertisements)
    _accept(
        state,
        "keys",
        ad.job_id,
        ad.round,
        ad.site,
        tuple(s for s in state.request.participants if s not in known),
    )
    return replace(state, advertisements=(*state.advertisements, ad))


def key_list(state: ServerState) -> tuple[ServerState, KeyList]:
    """Close step 0: the advertisements received form U1."""
    ads = tuple(sorted(state.advertisements, key=lambda a: a.site))
    return replace(state, stage="shares", advertisements=ads), KeyList(
        state.request.job_id, state.request.round, ads
    )


def add_shares(state: ServerState, bundle: ShareBundle) -> ServerState:
    live = tuple(a.site for a in state.advertisements if a.site not in state.sharers)
    _accept(state, "shares", bundle.job_id, bundle.round, bundle.sender, live)
    relayed = tuple((bundle.sender, r, ct) for r, ct in bundle.ciphertexts)
    return replace(state, relayed=state.relayed + relayed, sharers=(*state.sharers, bundle.sender))


def deliveries(state: ServerState) -> tuple[ServerState, list[ShareDelivery]]:
    """Close step 1: each sharer gets the ciphertexts other sharers addressed to it."""
    sharers = tuple(sorted(state.sharers))
    out = []
    for r in sharers:
        cts = tuple((s, ct) for s, rr, ct in state.relayed if rr == r and s in sharers)
        out.append(ShareDelivery(state.request.job_id, state.request.round, r, cts))
    return replace(state, stage="masked", sharers=sharers, relayed=()), out


def add_masked(state: ServerState, masked: MaskedInput) -> ServerState:
    allowed = tuple(s for s in state.sharers if s not in state.contributors)
    _accept(state, "masked", masked.job_id, masked.round, masked.site, allowed)
    if masked.vector.dtype != state.total.dtype or masked.vector.shape != state.total.shape:
        raise SecAggError(
            f"masked input of {masked.site!r} has {masked.vector.dtype} {masked.vector.shape}; refused"
        )
    total = state.total + masked.vector  # wraps mod the word size; reduced at the end
    return replace(state, total=total, contributors=(*state.contributors, masked.site))


def survivor_request(state: ServerState) -> tuple[ServerState, SurvivorRequest]:
    """Close step 2: the contributors are the survivors U3 (a late input is refused from now on)."""
    survivors = tuple(sorted(state.contributors))
    need = max((a.quorum for a in state.advertisements if a.site in survivors), default=2)
    if len(survivors) < need:
        raise SecAggError(
            f"{len(survivors)} sites sent masked inputs, the sites require {need}: the round fails"
        )
    req = SurvivorRequest(state.request.job_id, state.request.round, survivors)
    return replace(state, stage="signatures", survivors=survivors), req


def add_signature(state: ServerState, sig: SurvivorSignature) -> ServerState:
    signed = tuple(s for s, _ in state.signatures)
    _accept(
        state,
        "signatures",
        sig.job_id,
        sig.round,
        sig.site,
        tuple(s for s in state.survivors if s not in signed),
    )
    return replace(state, signatures=(*state.signatures, (sig.site, sig.signature)))


def unmask_request(state: ServerState) -> tuple[ServerState, UnmaskRequest]:
    """Close step 3: the survivor set with every signature received."""
    sigs = tuple(sorted(state.signatures))
    req = UnmaskRequest(state.request.job_id, state.request.round, state.survivors, sigs)
    return replace(state, stage="unmask", signatures=sigs), req


def add_reveal(state: ServerState, reply: UnmaskReply) -> ServerState:
    done = {h for h, *_ in state.revealed}
    _accept(
        state,
        "unmask",
        reply.job_id,
        reply.round,
        reply.site,
        tuple(s for s in state.survivors if s not in done),
    )
    rows = [(reply.site, o, "seed", i, s) for o, i, s in reply.self_mask_shares]
    rows += [(reply.site, o, "key", i, k) for o, i, k in reply.mask_key_shares]
    return replace(state, revealed=state.revealed + tuple(rows))


def _recover(state: ServerState, kind: str, owners: tuple[str, ...]) -> dict[str, bytes]:
    """Every owner's secret of ``kind`` from the revealed shares, reconstructed together."""
    ads = {a.site: a for a in state.advertisements}
    by_owner: dict[str, list[tuple[int, bytes]]] = {o: [] for o in owners}
    for _, o, k, i, s in state.revealed:
        if k == kind and o in by_owner:
            by_owner[o].append((i, s))
    out: dict[str, bytes] = {}
    for t in sorted({ads[o].share_threshold for o in owners}):
        group = {o: by_owner[o] for o in owners if ads[o].share_threshold == t}
        short = [o for o, s in group.items() if len(s) < t]
        if short:
            raise SecAggError(
                f"{len(group[short[0]])} shares of {short[0]!r}'s {kind}, {t} needed: the round cannot finish"
            )
        out |= shamir.combine_many(group, threshold=t)
    return out


def _unmasking_seeds(state: ServerState) -> list[tuple[bytes, int]]:
    """(seed, sign) of every mask to remove: survivors' self-masks, dropped sites' pairwise masks."""
    req, ads = state.request, {a.site: a for a in state.advertisements}
    out: list[tuple[bytes, int]] = []
    for u, seed in _recover(state, "seed", state.survivors).items():
        if self_commitment(req.job_id, req.round, u, seed) != ads[u].self_commitment:
            raise SecAggError(f"the self-mask seed of {u!r} does not match its commitment: a bad share")
        out.append((seed, -1))
    graph = neighbours(
        req.participants,
        degree=req.degree,
        seed=graph_seed(req.job_id, req.round, req.participants, req.degree),
    )
    dropped = tuple(s for s in state.sharers if s not in state.survivors)
    for v, key in _recover(state, "key", dropped).items():
        if x25519_public(key) != ads[v].mask_public:
            raise SecAggError(f"the mask key of dropped {v!r} does not match its public key: a bad share")
        for u in (u for u in graph[v] if u in state.survivors):
            secret = agree(key, ads[u].mask_public)
            seed = derive_key(secret, purpose="mask", job_id=req.job_id, round_=req.round, a=u, b=v)
            out.append((seed, -1 if u < v else 1))  # u added the pair's mask if u < v: take it out
    return out


def result(state: ServerState) -> NDArray[np.unsignedinteger]:
    """The sum of the survivors' inputs mod 2^k, once enough shares were revealed."""
    if state.stage != "unmask":
        raise SecAggError(f"the sum is available after the unmask step, this round is at {state.stage!r}")
    return apply_masks(state.total, seeds=_unmasking_seeds(state), modulus_bits=state.request.modulus_bits)

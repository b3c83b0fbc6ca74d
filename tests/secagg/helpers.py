"""A federation of in-memory sites and a step-by-step driver, so a test can play the coordinator."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from fedcore.secagg import client, server
from fedcore.secagg.keys import Identity, Members
from fedcore.secagg.messages import MaskedInput, RoundRequest, SurvivorSignature, UnmaskReply
from fedcore.secagg.policy import SecAggPolicy


def names(n: int) -> tuple[str, ...]:
    return tuple(f"site{i:03d}" for i in range(n))


def federation(n: int, **policy: object) -> dict[str, tuple[SecAggPolicy, Identity]]:
    """``n`` sites with one shared member list (each site holds its own copy of the same list)."""
    ids = {s: Identity.generate(s) for s in names(n)}
    members = Members.of({s: i.public_key for s, i in ids.items()})
    kw: dict[str, object] = {"threshold": 2, **policy}
    return {s: (SecAggPolicy(members, **kw), i) for s, i in ids.items()}  # type: ignore[arg-type]


def random_words(n: int, length: int, seed: int = 0, bits: int = 32) -> dict[str, NDArray[np.uint32]]:
    rng = np.random.default_rng(seed)
    return {s: rng.integers(0, 2**bits, length, dtype=np.uint64).astype(np.uint32) for s in names(n)}


def plain_sum(inputs: dict[str, NDArray[np.uint32]], keep: set[str]) -> NDArray[np.uint32]:
    total = np.zeros_like(next(iter(inputs.values())))
    for s in sorted(keep):
        total += inputs[s]
    return total


@dataclass
class Round:
    """Every party's state after steps 0-2, driven by hand (the coordinator is the test)."""

    sites: dict[str, tuple[SecAggPolicy, Identity]]
    request: RoundRequest
    sstate: server.ServerState
    states: dict[str, client.ClientState] = field(default_factory=dict)
    masked: dict[str, MaskedInput] = field(default_factory=dict)

    def sign(self, site: str, survivors: tuple[str, ...]) -> SurvivorSignature:
        req = server.SurvivorRequest(self.request.job_id, self.request.round, survivors)
        self.states[site], sig = client.sign_survivors(self.sites[site][1], self.states[site], req)
        return sig

    def reveal(self, site: str, survivors: tuple[str, ...], sigs: list[SurvivorSignature]) -> UnmaskReply:
        req = server.UnmaskRequest(
            self.request.job_id,
            self.request.round,
            survivors,
            tuple(sorted((s.site, s.signature) for s in sigs)),
        )
        self.states[site], reply = client.reveal_shares(self.sites[site][0], self.states[site], req)
        return reply


def masked_round(
    sites: dict[str, tuple[SecAggPolicy, Identity]],
    inputs: dict[str, NDArray[np.uint32]],
    *,
    job_id: str = "job",
    round_: int = 1,
    degree: int | None = None,
) -> Round:
    """Run steps 0-2 honestly for every site; the caller plays steps 3-4."""
    n = len(sites)
    sstate, req = server.open_round(
        job_id,
        round_,
        tuple(sites),
        degree=n - 1 if degree is None else degree,
        modulus_bits=32,
        length=len(next(iter(inputs.values()))),
    )
    rnd = Round(sites, req, sstate)
    for s, (policy, ident) in sites.items():
        rnd.states[s], ad = client.start_round(policy, ident, req)
        rnd.sstate = server.add_advertisement(rnd.sstate, ad)
    rnd.sstate, klist = server.key_list(rnd.sstate)
    for s, (policy, ident) in sites.items():
        rnd.states[s], bundle = client.share_keys(policy, ident, rnd.states[s], klist)
        rnd.sstate = server.add_shares(rnd.sstate, bundle)
    rnd.sstate, out = server.deliveries(rnd.sstate)
    for d in out:
        rnd.states[d.receiver], m = client.mask_input(rnd.states[d.receiver], d, inputs[d.receiver])
        rnd.masked[d.receiver] = m
        rnd.sstate = server.add_masked(rnd.sstate, m)
    return rnd

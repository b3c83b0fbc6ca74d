"""One SecAgg+ round in memory, every message through ``to_bytes``/``from_bytes`` (tests, benchmarks).

No transport: the coordinator's steps and every site's steps run in this process, in order. Sites
named in ``drop[step]`` stop answering from that step on (``"keys"``: before advertising, ...,
``"unmask"``: after signing, before revealing). Records seconds per step per site, the
coordinator's seconds, and the bytes each site sent and received.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from fedcore.secagg import client, server
from fedcore.secagg.keys import Identity
from fedcore.secagg.messages import (
    KeyList,
    RoundRequest,
    ShareDelivery,
    SurvivorRequest,
    UnmaskRequest,
)
from fedcore.secagg.policy import SecAggPolicy
from fedcore.secagg.wire import Record

__all__ = ["RoundStats", "Step", "run_round"]

Step = Literal["keys", "shares", "masked", "signatures", "unmask"]
R = TypeVar("R", bound=Record)
Sites = Mapping[str, tuple[SecAggPolicy, Identity]]


@dataclass
class RoundStats:
    """Seconds per (site, step), the coordinator's seconds, and bytes per site (sent, received)."""

    site_seconds: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    server_seconds: float = 0.0
    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _wire(msg: R, counter: dict[str, int], site: str) -> R:
    data = msg.to_bytes()
    counter[site] += len(data)
    return type(msg).from_bytes(data)


@dataclass
class _Sim:
    sites: Sites
    inputs: Mapping[str, NDArray[np.unsignedinteger]]
    drop: Mapping[Step, set[str]]
    sstate: server.ServerState
    stats: RoundStats = field(default_factory=RoundStats)
    states: dict[str, client.ClientState] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)

    def live(self, step: Step, among: tuple[str, ...]) -> list[str]:
        self.gone |= self.drop.get(step, set())
        return [s for s in among if s not in self.gone]

    def site_step(self, site: str, step: Step, msg: Record) -> Record:
        """Deliver ``msg`` to ``site``, run its step (timed), return its reply (after the wire)."""
        policy, ident = self.sites[site]
        got, t0 = _wire(msg, self.stats.received, site), time.perf_counter()
        reply: Record
        st = self.states.get(site)
        if isinstance(got, RoundRequest):
            self.states[site], reply = client.start_round(policy, ident, got)
        elif isinstance(got, KeyList) and st is not None:
            self.states[site], reply = client.share_keys(policy, ident, st, got)
        elif isinstance(got, ShareDelivery) and st is not None:
            self.states[site], reply = client.mask_input(st, got, self.inputs[site])
        elif isinstance(got, SurvivorRequest) and st is not None:
            self.states[site], reply = client.sign_survivors(ident, st, got)
        elif isinstance(got, UnmaskRequest) and st is not None:
            self.states[site], reply = client.reveal_shares(policy, st, got)
        else:
            raise TypeError(f"no site step for {type(got).__name__}")
        self.stats.site_seconds[site][step] = time.perf_counter() - t0
        return _wire(reply, self.stats.sent, site)

    def serve(self, fn: object, *args: object) -> object:
        """Run one coordinator function on the current state (timed); keep the new state."""
        t0 = time.perf_counter()
        out = fn(self.sstate, *args)  # type: ignore[operator]
        self.stats.server_seconds += time.perf_counter() - t0
        if isinstance(out, tuple):
            self.sstate, result = out
            return result
        self.sstate = out
        return None


def run_round(
    sites: Sites,
    inputs: Mapping[str, NDArray[np.unsignedinteger]],
    *,
    job_id: str = "job",
    round_: int = 1,
    degree: int | None = None,
    modulus_bits: int = 32,
    drop: Mapping[Step, set[str]] | None = None,
) -> tuple[NDArray[np.unsignedinteger], server.ServerState, RoundStats]:
    """Run one round; returns the unmasked sum (mod 2^k), the coordinator's state, and the stats."""
    names = tuple(sorted(sites))
    length, k = len(next(iter(inputs.values()))), len(names) - 1 if degree is None else degree
    t0 = time.perf_counter()
    sstate, req = server.open_round(job_id, round_, names, degree=k, modulus_bits=modulus_bits, length=length)
    sim = _Sim(sites, inputs, drop or {}, sstate)
    sim.stats.server_seconds += time.perf_counter() - t0
    for s in sim.live("keys", names):
        sim.serve(server.add_advertisement, sim.site_step(s, "keys", req))
    klist = sim.serve(server.key_list)
    for s in sim.live("shares", names):
        sim.serve(server.add_shares, sim.site_step(s, "shares", klist))  # type: ignore[arg-type]
    for d in sim.serve(server.deliveries):  # type: ignore[attr-defined]
        if d.receiver in sim.live("masked", names):
            sim.serve(server.add_masked, sim.site_step(d.receiver, "masked", d))
    sreq = sim.serve(server.survivor_request)
    assert isinstance(sreq, SurvivorRequest)
    for s in sim.live("signatures", sreq.survivors):
        sim.serve(server.add_signature, sim.site_step(s, "signatures", sreq))
    ureq = sim.serve(server.unmask_request)
    assert isinstance(ureq, UnmaskRequest)
    for s in sim.live("unmask", ureq.survivors):
        sim.serve(server.add_reveal, sim.site_step(s, "unmask", ureq))
    t0 = time.perf_counter()
    total = server.result(sim.sstate)
    sim.stats.server_seconds += time.perf_counter() - t0
    return total, sim.sstate, sim.stats

"""One SecAgg+ round in memory, every message through ``to_bytes``/``from_bytes`` (tests, benchmarks).

No transport: the coordinator's steps and every site's steps run in this process, in order. Sites
named in ``drop[step]`` stop answering from that step on (``"keys"``: before advertising, ...,
``"unmask"``: after signing, before revealing). Records seconds per step per site, the
coordinator's seconds, and the bytes each site sent and received.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from fedcore.secagg import client, server
from fedcore.secagg.keys import Identity
from fedcore.secagg.messages import (
    KeyList,
    MaskedInput,
    ShareBundle,
    ShareDelivery,
    SurvivorRequest,
    SurvivorSignature,
    UnmaskReply,
    UnmaskRequest,
)
from fedcore.secagg.policy import SecAggPolicy
from fedcore.secagg.wire import Record

__all__ = ["RoundStats", "Step", "run_round"]

Step = Literal["keys", "shares", "masked", "signatures", "unmask"]
STEPS: tuple[Step, ...] = ("keys", "shares", "masked", "signatures", "unmask")
R = TypeVar("R", bound=Record)


@dataclass
class RoundStats:
    """Seconds per (site, step), the coordinator's seconds, and bytes per site (sent, received)."""

    site_seconds: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    server_seconds: float = 0.0
    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _wire(msg: R, cls: type[R], counter: dict[str, int], site: str) -> R:
    data = msg.to_bytes()
    counter[site] += len(data)
    return cls.from_bytes(data)


def _timed(stats: RoundStats, site: str, step: str, fn: Callable[[], R]) -> R:
    t0 = time.perf_counter()
    out = fn()
    stats.site_seconds[site][step] = time.perf_counter() - t0
    return out


def run_round(
    sites: Mapping[str, tuple[SecAggPolicy, Identity]],
    inputs: Mapping[str, NDArray[np.unsignedinteger]],
    *,
    job_id: str = "job",
    round_: int = 1,
    degree: int | None = None,
    modulus_bits: int = 32,
    drop: Mapping[Step, set[str]] | None = None,
) -> tuple[NDArray[np.unsignedinteger], server.ServerState, RoundStats]:
    """Run one round; returns the unmasked sum (mod 2^k), the coordinator's state, and the stats."""
    drop = drop or {}
    stats, names = RoundStats(), tuple(sorted(sites))
    length = len(next(iter(inputs.values())))
    gone: set[str] = set()
    t0 = time.perf_counter()
    sstate, req = server.open_round(
        job_id, round_, names, degree=len(names) - 1 if degree is None else degree, modulus_bits=modulus_bits, length=length
    )
    stats.server_seconds += time.perf_counter() - t0
    states: dict[str, client.ClientState] = {}

    def live(step: Step) -> list[str]:
        gone.update(drop.get(step, set()))
        return [s for s in names if s not in gone]

    def serve(fn: Callable[[], tuple[server.ServerState, object]]) -> object:
        nonlocal sstate
        t = time.perf_counter()
        sstate, out = fn()
        stats.server_seconds += time.perf_counter() - t
        return out

    for s in live("keys"):
        policy, ident = sites[s]
        r = _wire(req, type(req), stats.received, s)
        states[s], ad = _timed(stats, s, "keys", lambda: client.start_round(policy, ident, r))
        sstate = server.add_advertisement(sstate, _wire(ad, type(ad), stats.sent, s))
    klist = serve(lambda: server.key_list(sstate))
    assert isinstance(klist, KeyList)
    for s in live("shares"):
        policy, ident = sites[s]
        kl = _wire(klist, KeyList, stats.received, s)
        states[s], bundle = _timed(stats, s, "shares", lambda: client.share_keys(policy, ident, states[s], kl))
        sstate = server.add_shares(sstate, _wire(bundle, ShareBundle, stats.sent, s))
    out = serve(lambda: server.deliveries(sstate))
    assert isinstance(out, list)
    for d in out:
        s = d.receiver
        if s in live("masked"):
            dl = _wire(d, ShareDelivery, stats.received, s)
            states[s], masked = _timed(stats, s, "masked", lambda: client.mask_input(states[s], dl, inputs[s]))
            sstate = _serve_add(stats, sstate, server.add_masked, _wire(masked, MaskedInput, stats.sent, s))
    sreq = serve(lambda: server.survivor_request(sstate))
    assert isinstance(sreq, SurvivorRequest)
    for s in (s for s in live("signatures") if s in sreq.survivors):
        r3 = _wire(sreq, SurvivorRequest, stats.received, s)
        states[s], sig = _timed(stats, s, "signatures", lambda: client.sign_survivors(sites[s][1], states[s], r3))
        sstate = server.add_signature(sstate, _wire(sig, SurvivorSignature, stats.sent, s))
    ureq = serve(lambda: server.unmask_request(sstate))
    assert isinstance(ureq, UnmaskRequest)
    for s in (s for s in live("unmask") if s in ureq.survivors):
        r4 = _wire(ureq, UnmaskRequest, stats.received, s)
        states[s], rep = _timed(stats, s, "unmask", lambda: client.reveal_shares(sites[s][0], states[s], r4))
        sstate = server.add_reveal(sstate, _wire(rep, UnmaskReply, stats.sent, s))
    t = time.perf_counter()
    total = server.result(sstate)
    stats.server_seconds += time.perf_counter() - t
    return total, sstate, stats


def _serve_add(
    stats: RoundStats,
    sstate: server.ServerState,
    fn: Callable[[server.ServerState, MaskedInput], server.ServerState],
    msg: MaskedInput,
) -> server.ServerState:
    t = time.perf_counter()
    out = fn(sstate, msg)
    stats.server_seconds += time.perf_counter() - t
    return out

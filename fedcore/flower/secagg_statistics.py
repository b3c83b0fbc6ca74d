"""The coordinator's side of a statistics batch under secure aggregation (exact or noisy): one SecAgg+ round.

After admission (each site's plan names the batch's layout: per statistic its groups and integers
per group; all must agree), the accepted sites run one round of the protocol
(``fedcore.secagg.server``), numbered 1, with a fresh attempt id (``JOB_ID/ATTEMPT``):
``secagg-start``, ``secagg-share``, ``secagg-answer`` (each site's share delivery; it answers with
its masked integer vector), ``secagg-sign`` and ``secagg-reveal``. The coordinator holds the running
sum of masked vectors, never one site's; it learns the sum over the survivors only, reads it back
per statistic and group (``fedcore.analytics.exact``) and suppresses, in its report, summed cells
below the largest ``min_cell_size`` the survivors state. A noisy batch's sums hold the survivors'
distributed noise: the report says so, with the summed noise's std per integer
(``fedcore.analytics.noisy.summed_std``; what each site charged is its own, in its admission plan).
A site that fails a step is left out from then on, with its reason; a batch whose survivors fall
below a site's threshold or floor fails.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedcore.analytics.exact import MODULUS_BITS, exact_sums
from fedcore.analytics.noisy import secure_point, summed_std
from fedcore.analytics.query import QueryRequest
from fedcore.errors import PolicyError, SecAggError
from fedcore.flower.replies import clean_reason
from fedcore.flower.serde import opaque_from_record, opaque_to_record
from fedcore.secagg import server
from fedcore.secagg.keys import Members
from fedcore.secagg.messages import KeyAdvertisement, MaskedInput, ShareBundle, SurvivorSignature, UnmaskReply
from fedcore.secagg.policy import SecAggPolicy, proposed_degree
from fedcore.secagg.wire import Record

__all__ = ["exact_layout_of", "secagg_statistics"]

KEY = "secagg"
R = TypeVar("R", bound=Record)
_SENDER = {KeyAdvertisement: "site", ShareBundle: "sender", MaskedInput: "site", SurvivorSignature: "site",
           UnmaskReply: "site"}  # fmt: skip


def exact_layout_of(admission: Mapping[str, Mapping[str, Any]], sites: Sequence[str]) -> tuple[Any, int]:
    """The layout every accepted site's plan names, and the largest ``min_cell_size`` among them;
    ``PolicyError`` when the plans differ (the sites read the schema differently)."""
    layouts = {repr(admission[s]["plan"].get("layout")) for s in sites}
    if len(layouts) != 1:
        raise PolicyError("the sites' plans name different layouts for the exact sums; nothing was asked")
    first = admission[sites[0]]["plan"]["layout"]
    cell = max(int(admission[s]["plan"].get("min_cell_size", 0)) for s in sites)
    return [(list(x["groups"]), int(x["width"])) for x in first], cell


class _Round:
    def __init__(self, grid: Grid, request: QueryRequest, nodes: Mapping[str, int], timeout: float) -> None:
        self.grid, self.request, self.nodes, self.timeout = grid, request, dict(nodes), timeout
        self.rejected: dict[str, str] = {}

    def send(self, payloads: Mapping[str, bytes], action: str) -> list[Message]:
        config = ConfigRecord({"action": action, "statistics": self.request.to_wire()})
        msgs = [
            Message(
                RecordDict({"config": config, KEY: opaque_to_record(data, KEY)}),
                dst_node_id=self.nodes[site],
                message_type=MessageType.QUERY,
            )
            for site, data in payloads.items()
        ]
        return list(self.grid.send_and_receive(msgs, timeout=self.timeout))

    def step(self, payloads: Mapping[str, bytes], action: str, kind: type[R]) -> list[R]:
        """Each asked site's answer of ``kind``, once, naming its own site; others are rejected."""
        payloads = {s: d for s, d in payloads.items() if s not in self.rejected}
        expected = {self.nodes[s]: s for s in payloads}
        out: dict[str, R] = {}
        for reply in self.send(payloads, action):
            site = expected.get(reply.metadata.src_node_id)
            if site is None or site in out:
                continue
            try:
                if reply.has_error():
                    raise SecAggError(clean_reason(str(reply.error.reason)))
                record = kind.from_bytes(opaque_from_record(reply.content.array_records[KEY], KEY))
                if getattr(record, _SENDER[kind]) != site:
                    raise SecAggError(f"node of {site!r} answered for {getattr(record, _SENDER[kind])!r}")
                out[site] = record
            except Exception as err:  # a bad answer leaves its site out, with the reason
                self.rejected[site] = clean_reason(f"secure aggregation ({kind.KIND}): {err}")
        for site in payloads:
            if site not in out:
                self.rejected.setdefault(site, f"secure aggregation ({kind.KIND}): no answer")
        return [out[s] for s in sorted(out)]

    def apply(self, state: server.ServerState, fn: Any, records: Sequence[Record]) -> server.ServerState:
        for rec in records:
            try:
                state = fn(state, rec)
            except SecAggError as err:
                self.rejected[str(getattr(rec, _SENDER[type(rec)]))] = clean_reason(str(err))
        return state

    def everyone(self, msg: Record, sites: Sequence[str]) -> dict[str, bytes]:
        data = msg.to_bytes()
        return {s: data for s in sites}


def secagg_statistics(
    grid: Grid, request: QueryRequest, nodes: Mapping[str, int], admission: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    """Run the batch's one round over ``nodes`` (site -> node, the accepted sites); the body's
    ``results`` (exact sums per statistic), ``survivors`` and ``failed``."""
    names = tuple(sorted(nodes))
    layout, min_cell = exact_layout_of(admission, names)
    rnd, length = _Round(grid, request, nodes, timeout), sum(len(g) * w for g, w in layout)
    n = len(names)
    degree = n - 1 if n <= 100 else proposed_degree(SecAggPolicy(Members(()), threshold=2), n)
    session = f"{request.job_id}/{uuid.uuid4().hex[:16]}"
    state, rr = server.open_round(session, 1, names, degree=degree, modulus_bits=MODULUS_BITS, length=length)
    try:
        state = rnd.apply(state, server.add_advertisement, rnd.step(rnd.everyone(rr, names), "secagg-start",
                                                                   KeyAdvertisement))  # fmt: skip
        state, klist = server.key_list(state)
        sharers = [a.site for a in state.advertisements]
        state = rnd.apply(state, server.add_shares, rnd.step(rnd.everyone(klist, sharers), "secagg-share",
                                                             ShareBundle))  # fmt: skip
        state, out = server.deliveries(state)
        masked = rnd.step({d.receiver: d.to_bytes() for d in out}, "secagg-answer", MaskedInput)
        state = rnd.apply(state, server.add_masked, masked)
        state, sreq = server.survivor_request(state)
        survivors = list(sreq.survivors)
        sigs = rnd.step(rnd.everyone(sreq, survivors), "secagg-sign", SurvivorSignature)
        state = rnd.apply(state, server.add_signature, sigs)
        state, ureq = server.unmask_request(state)
        state = rnd.apply(state, server.add_reveal, rnd.step(rnd.everyone(ureq, survivors), "secagg-reveal",
                                                             UnmaskReply))  # fmt: skip
        total = secure_point(request).from_words(server.result(state), num_sites=len(survivors))
    except SecAggError as err:
        why = "; ".join(f"{s}: {r}" for s, r in sorted(rnd.rejected.items())) or "no site left out"
        raise PolicyError(
            f"statistics {request.job_id}: the secure sum could not be opened ({err}); nothing was "
            f"combined ({why})"
        ) from err
    ints = np.asarray(total, dtype=np.int64)
    std = summed_std(request, len(survivors)) if request.job.noisy else None
    results = exact_sums(request.job.queries, layout, ints, min_cell_size=min_cell, noise_std=std)
    failed = dict(rnd.rejected)
    body = {"results": results, "survivors": survivors, "failed": failed, "min_cell_size": min_cell}
    if std is not None:
        charged = {s: admission[s]["plan"].get("epsilon") for s in survivors}
        body["noise"] = {"mechanism": request.job.noise, "noise_multiplier": request.job.noise_multiplier,
                         "summed_std": std, "epsilon_charged": charged}  # fmt: skip
    return body

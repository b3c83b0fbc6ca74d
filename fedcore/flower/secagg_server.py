"""The coordinator's side of a secure-aggregation job: each training round is one SecAgg+ round.

Before the train messages: ``secagg-start`` (the round request) and ``secagg-share`` (the signed
key list) as queries; the train message to each site carries its share delivery; after the
masked inputs: ``secagg-sign`` (the survivor set) and ``secagg-reveal`` (the set with the
survivors' signatures). The coordinator (``fedcore.secagg.server``) holds the running sum of
masked inputs, never one site's input, and learns the sum over the survivors only; it decodes it,
divides by the masked-in total weight, and the strategy applies the aggregator's mean step.

A site that fails a step is left out of the round from then on, with its reason; a round whose
sites cannot reach their thresholds fails (the job stops, resumable). Each coordinator run draws a
fresh attempt id (``JOB_ID/ATTEMPT``), so a resumed job starts its rounds with fresh keys, and the
sites (which keep their input per round and sign one survivor set per round, ever) are never
charged twice nor opened twice.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TypeVar

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from numpy.typing import NDArray

from fedcore.config.job import JobRequest
from fedcore.errors import SecAggError, UpdateError
from fedcore.flower.replies import clean_reason
from fedcore.flower.serde import opaque_from_record, opaque_to_record
from fedcore.secagg import server
from fedcore.secagg.job import Encoder, encoder
from fedcore.secagg.keys import Members
from fedcore.secagg.messages import KeyAdvertisement, MaskedInput, ShareBundle, SurvivorSignature, UnmaskReply
from fedcore.secagg.policy import SecAggPolicy, proposed_degree
from fedcore.secagg.wire import Record

__all__ = ["SecAggRounds"]

KEY = "secagg"
R = TypeVar("R", bound=Record)
_SENDER = {KeyAdvertisement: "site", ShareBundle: "sender", MaskedInput: "site", SurvivorSignature: "site",
           UnmaskReply: "site"}  # fmt: skip


class SecAggRounds:
    """One job's secure aggregation at the coordinator (see the module docstring)."""

    def __init__(self, request: JobRequest, timeout: float) -> None:
        spec = request.spec.secagg
        if spec is None:
            raise SecAggError(f"job {request.job_id!r} does not use secure aggregation")
        self.request, self.timeout = request, timeout
        self.session = f"{request.job_id}/{uuid.uuid4().hex[:16]}"  # a fresh attempt per coordinator run
        self.encoder: Encoder = encoder(spec, request.num_sites)
        self.state: server.ServerState | None = None
        self.deliveries: dict[int, bytes] = {}
        self.rejected: dict[str, str] = {}
        self.figures: dict[str, float] = {}

    def _degree(self, n: int) -> int:
        assert self.request.spec.secagg is not None
        if self.request.spec.secagg.graph == "complete":
            return n - 1
        return proposed_degree(SecAggPolicy(Members(()), threshold=2), n)

    def _send(self, grid: Grid, payloads: Mapping[int, bytes], action: str) -> list[Message]:
        config = ConfigRecord({"action": action, "job": self.request.to_wire()})
        msgs = [
            Message(
                RecordDict({"config": config, KEY: opaque_to_record(data, KEY)}),
                dst_node_id=node,
                message_type=MessageType.QUERY,
            )
            for node, data in payloads.items()
        ]
        sent = sum(len(d) for d in payloads.values())
        self.figures["sent_bytes"] = self.figures.get("sent_bytes", 0.0) + sent
        return list(grid.send_and_receive(msgs, timeout=self.timeout))

    def _parsed(self, replies: Sequence[Message], kind: type[R], expected: Mapping[int, str]) -> list[R]:
        """Each expected node's answer of ``kind``, once, naming its own site; others are rejected."""
        out: dict[str, R] = {}
        for reply in replies:
            site = expected.get(reply.metadata.src_node_id)
            if site is None or site in out or site in self.rejected:
                continue  # not asked, or a second answer: ignored
            try:
                if reply.has_error():
                    raise SecAggError(clean_reason(str(reply.error.reason)))
                data = opaque_from_record(reply.content.array_records[KEY], KEY)
                self.figures["received_bytes"] = self.figures.get("received_bytes", 0.0) + len(data)
                record = kind.from_bytes(data)
                if getattr(record, _SENDER[kind]) != site:
                    raise SecAggError(f"node of {site!r} answered for {getattr(record, _SENDER[kind])!r}")
                out[site] = record
            except Exception as err:  # a bad answer leaves its site out of the round, with the reason
                self.rejected[site] = clean_reason(f"secure aggregation ({kind.KIND}): {err}")
        return [out[s] for s in sorted(out)]

    def _step(self, grid: Grid, nodes: Mapping[str, int], msg: Record, action: str, kind: type[R]) -> list[R]:
        data = msg.to_bytes()
        expected = {nodes[s]: s for s in nodes if s not in self.rejected}
        return self._parsed(self._send(grid, {n: data for n in expected}, action), kind, expected)

    def _apply(self, fn: Callable[[server.ServerState, R], server.ServerState], records: Sequence[R]) -> None:
        assert self.state is not None
        for rec in records:
            try:
                self.state = fn(self.state, rec)
            except SecAggError as err:
                self.rejected[str(getattr(rec, _SENDER[type(rec)]))] = clean_reason(str(err))

    def prepare(self, grid: Grid, server_round: int, nodes: Mapping[str, int], num_params: int) -> list[int]:
        """Steps 0-1 with ``nodes`` (site -> node); returns the nodes to send a train message."""
        t0, self.rejected, self.figures = time.perf_counter(), {}, {}
        names = tuple(sorted(nodes))
        length = self.encoder.length(num_params)
        bits = self.encoder.spec.modulus_bits
        self.state, rr = server.open_round(
            self.session,
            server_round,
            names,
            degree=self._degree(len(names)),
            modulus_bits=bits,
            length=length,
        )
        self._apply(server.add_advertisement, self._step(grid, nodes, rr, "secagg-start", KeyAdvertisement))
        self.state, klist = server.key_list(self.state)
        sharers = {a.site: nodes[a.site] for a in self.state.advertisements}
        self._apply(server.add_shares, self._step(grid, sharers, klist, "secagg-share", ShareBundle))
        self.state, out = server.deliveries(self.state)
        self.deliveries = {nodes[d.receiver]: d.to_bytes() for d in out}
        self.figures["secagg_setup_seconds"] = time.perf_counter() - t0
        return sorted(self.deliveries)

    def for_node(self, record: RecordDict, node: int) -> RecordDict:
        """A train message carries its site's share delivery."""
        return RecordDict({**record, KEY: opaque_to_record(self.deliveries[node], KEY)})

    def finish(
        self,
        grid: Grid,
        replies: Sequence[Message],
        asked: Collection[int],
        site_of: Callable[[Message], str],
    ) -> tuple[NDArray[np.float64], float, dict[str, dict[str, float]]]:
        """Steps 2-4: the masked inputs, the survivors' signatures, the reveal; returns the survivors'
        summed update, their summed weight, and each survivor's public metrics."""
        assert self.state is not None
        t0 = time.perf_counter()
        nodes = {site_of(m): m.metadata.src_node_id for m in replies if m.metadata.src_node_id in asked}
        expected = {n: s for s, n in nodes.items()}
        inputs = self._parsed(replies, MaskedInput, expected)
        metrics = {}
        for msg in replies:
            site = expected.get(msg.metadata.src_node_id)
            if (
                site is not None
                and any(m.site == site for m in inputs)
                and "metrics" in msg.content.metric_records
            ):
                metrics[site] = _public(msg.content.metric_records["metrics"])
        self._apply(server.add_masked, inputs)
        self.state, sreq = server.survivor_request(self.state)
        survivors = {s: nodes[s] for s in sreq.survivors}
        self._apply(server.add_signature, self._step(grid, survivors, sreq, "secagg-sign", SurvivorSignature))
        self.state, ureq = server.unmask_request(self.state)
        self._apply(server.add_reveal, self._step(grid, survivors, ureq, "secagg-reveal", UnmaskReply))
        t1 = time.perf_counter()
        total = server.result(self.state)
        self.figures["secagg_unmask_seconds"] = time.perf_counter() - t1
        values, weight = self.encoder.decode(total, survivors=len(sreq.survivors))
        self.figures["secagg_finish_seconds"] = time.perf_counter() - t0
        self.figures["secagg_survivors"] = float(len(sreq.survivors))
        if not np.all(np.isfinite(values)):
            raise UpdateError("the unmasked sum is not finite")
        return values, weight, {s: metrics.get(s, {}) for s in sreq.survivors}


def _public(record: MetricRecord) -> dict[str, float]:
    """A site's public training metrics: its finite numbers (anything else is left out)."""
    return {
        str(k): float(v)
        for k, v in record.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }

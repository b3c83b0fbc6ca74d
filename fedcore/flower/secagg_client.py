"""ClientApp handlers for secure-aggregation jobs: the protocol's queries and the masked train reply.

Queries (``config.action``): ``secagg-start`` (a ``RoundRequest``), ``secagg-share`` (a
``KeyList``), ``secagg-sign`` (a ``SurvivorRequest``), ``secagg-reveal`` (an ``UnmaskRequest``);
each message travels as its ``to_bytes()`` in the ``secagg`` array record, and so does the answer.
The train message carries the global model and this site's ``ShareDelivery``; the site trains,
clips, encodes and (under distributed DP) noises its update, keeps that integer vector as the
round's released reply (a re-asked round is masked again from it, never recomputed), and answers
with the masked vector only. The site logic is ``fedcore.clients.secagg_site``; the guard runs first.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord

from fedcore.aggregators.base import Arrays
from fedcore.clients.runtime import SiteRuntime
from fedcore.clients.secagg_site import secagg_site
from fedcore.config.job import JobRequest
from fedcore.errors import ConfigError, SecAggError
from fedcore.flower.serde import (
    arrays_from_record,
    as_int,
    metrics_record,
    opaque_from_record,
    opaque_to_record,
    site_reply,
)
from fedcore.secagg.messages import KeyList, RoundRequest, ShareDelivery, SurvivorRequest, UnmaskRequest
from fedcore.secagg.wire import Record
from fedcore.site.replies import StoredReply

__all__ = ["SECAGG_ACTIONS", "secagg_query", "secagg_train"]

SECAGG_ACTIONS = ("secagg-start", "secagg-share", "secagg-sign", "secagg-reveal")
KEY = "secagg"


def _payload(msg: Message) -> bytes:
    return opaque_from_record(msg.content.array_records[KEY], KEY)


def _answer(
    msg: Message, site: SiteRuntime, record: Record, extra: dict[str, MetricRecord] | None = None
) -> Message:
    records: dict[str, ArrayRecord | ConfigRecord | MetricRecord] = {
        KEY: opaque_to_record(record.to_bytes(), KEY)
    }
    return site_reply(msg, site.name, site.guard.ledger.audit_head(), {**records, **(extra or {})})


def secagg_query(msg: Message, site: SiteRuntime, action: str) -> Message:
    """One protocol step of a secure-aggregation round (see the module docstring)."""
    config = msg.content.config_records["config"]
    req = site.request(str(config["job"]))
    if req.spec.secagg is None:
        raise ConfigError(f"{action}: job {req.job_id!r} does not use secure aggregation; refused")
    sa, data = secagg_site(site), _payload(msg)
    admitted = site.guard.plans.plan(req.job_id)
    if admitted is None or admitted.digest != req.digest or admitted.status == "cancelled":
        text = f"{action}: job {req.job_id!r} is not admitted here under these settings; refused"
        site.guard.record("refuse", req.job_id, text, actor="coordinator")
        raise ConfigError(text)
    kinds: dict[str, type[Record]] = {
        "secagg-start": RoundRequest, "secagg-share": KeyList, "secagg-sign": SurvivorRequest,
        "secagg-reveal": UnmaskRequest,
    }  # fmt: skip
    try:
        parsed = kinds[action].from_bytes(data)
    except SecAggError as err:  # a malformed message from the coordinator: refused, audited
        site.guard.record("refuse", req.job_id, f"{action}: {err}", actor="coordinator")
        raise
    reply: Record
    if isinstance(parsed, RoundRequest):
        reply = sa.start(req, parsed)
    elif isinstance(parsed, KeyList):
        reply = sa.share(req, parsed)
    elif isinstance(parsed, SurvivorRequest):
        round_ = parsed.round

        def confirm(claim: str) -> object:
            return site.guard.plans.confirm(
                req.job_id, digest=req.digest, kind="train", round=round_, claim=claim
            )

        reply = sa.sign(req, parsed, confirm=confirm)
    else:
        assert isinstance(parsed, UnmaskRequest)
        reply = sa.reveal(req, parsed)
    return _answer(msg, site, reply)


def _flat(delta: tuple[np.ndarray, ...]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in delta])


def secagg_train(msg: Message, context: Context, site: SiteRuntime, req: JobRequest) -> Message:
    """Train, then answer with the masked, encoded update (the reply stored before it is masked)."""
    del context
    assert req.spec.secagg is not None
    sa = secagg_site(site)
    server_round = as_int(msg.content.config_records["config"]["server-round"])
    delivery = ShareDelivery.from_bytes(_payload(msg))
    if delivery.round != server_round:
        raise ConfigError(f"a share delivery of round {delivery.round} in round {server_round}; refused")
    with site.answering(req, "train", server_round):
        stored = site.replay(req, "train", server_round, actor="coordinator")
        if stored is None:
            global_arrays = arrays_from_record(msg.content.array_records["arrays"])
            site.check_global(req.spec.model, global_arrays)
            sa.ready(req, delivery)  # before the charge: this site is at the masking step of the attempt
            plan = site.authorize_once(req, "train", server_round, actor="coordinator")
            with site.computing(req, "train", server_round):
                result = site.local_update(req, plan, server_round=server_round, global_arrays=global_arrays)
                weight = 1.0 if req.spec.secagg.weight == "uniform" else result.weight
                ints = sa.encoder(req).encode(_flat(result.delta), weight, site.source)
                metrics = {k: v for k, v in result.metrics.items() if k != "num-examples"}
                site.replies.save(
                    req.job_id,
                    req.digest,
                    "train",
                    server_round,
                    StoredReply(cast(Arrays, (ints,)), metrics, weight),
                )  # int64 kept as saved
        else:
            ints, metrics = np.asarray(stored.arrays[0], dtype=np.int64), stored.metrics
        masked = sa.masked(req, delivery, ints)
    return _answer(msg, site, masked, {"metrics": metrics_record(metrics)})

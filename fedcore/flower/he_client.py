"""ClientApp handlers for HE jobs: keep the site's global model, decrypt sums, encrypt updates.
The site logic itself is in ``fedcore.he.site``; the guard runs first.

The site's model and optimizer state are kept in its state folder (``he/``), not in the node's
Context (Flower moves the Context with every message), so a job whose coordinator was restarted
(a new Flower run, an empty node state) continues from them; a round the site already released
is answered with the reply it gave (``fedcore.site.replies``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message

from fedcore.aggregators import Aggregator, make_aggregator
from fedcore.clients.runtime import SiteRuntime
from fedcore.config.job import JobRequest
from fedcore.errors import FedcoreError, KeyMismatchError
from fedcore.flower.serde import (
    arrays_from_record,
    as_int,
    metrics_record,
    opaque_from_record,
    opaque_to_record,
    site_reply,
)
from fedcore.he.site import (
    HeSiteState,
    apply_encrypted_sum,
    check_held_sum,
    encrypt_delta,
    open_training_sum,
)
from fedcore.models import build_model, get_arrays
from fedcore.site.replies import StoredReply, write_npz_atomic
from fedcore.site.sums import SumClaim, tags_from_wire

__all__ = ["he_evaluate", "he_train"]


def _state_file(site: SiteRuntime, job_id: str) -> Path:
    return site.guard.paths.folder / "he" / f"{hashlib.sha256(job_id.encode()).hexdigest()[:24]}.npz"


def _load_state(site: SiteRuntime, job_id: str) -> HeSiteState | None:
    """The site's model state for ``job_id``, from its state file (the only copy: the node's
    Context carries just ``he-meta``, because Flower ships the Context to the ClientApp and back
    with every message, which for a 1M-parameter model was 8 MB of float64 four times per round)."""
    return _load_state_file(_state_file(site, job_id), job_id)


def _load_state_file(path: Path, job_id: str) -> HeSiteState | None:
    """The state a restarted job left in the site's folder (``None`` if none or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            glob = tuple(np.array(data[f"g{i}"]) for i in range(int(meta["global"])))
            opt = tuple(np.array(data[f"o{i}"]) for i in range(int(meta["optimizer"])))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if meta.get("job") != job_id:
        return None
    return HeSiteState(int(meta["round"]), glob, opt, str(meta.get("digest", "")))


def _save_state(context: Context, site: SiteRuntime, job_id: str, state: HeSiteState) -> None:
    """Keep ``state`` in its file (``he-meta`` in the node's Context names what the file holds); a
    no-op when it already holds it (a train after this round's evaluate: the model of one round and
    sum digest is one model)."""
    kept = context.state.config_records.get("he-meta")
    held = None if kept is None else (str(kept["job"]), as_int(kept["round"]), str(kept.get("digest", "")))
    if held == (job_id, state.round, state.digest) and state.digest and _state_file(site, job_id).is_file():
        return
    context.state["he-meta"] = ConfigRecord({"job": job_id, "round": state.round, "digest": state.digest})
    meta = {"job": job_id, "round": state.round, "global": len(state.global_arrays), "digest": state.digest}
    meta["optimizer"] = len(state.optimizer_state)
    arrays = {f"g{i}": np.asarray(a) for i, a in enumerate(state.global_arrays)}
    arrays |= {f"o{i}": np.asarray(a) for i, a in enumerate(state.optimizer_state)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    write_npz_atomic(_state_file(site, job_id), arrays)


def _claim(entry: Mapping[str, object]) -> tuple[SumClaim, dict[str, str]]:
    """A sum's claim and its contributors' confirmations, as the coordinator sent them."""
    return SumClaim.from_wire(str(entry.get("claim", ""))), tags_from_wire(str(entry.get("tags", "{}")))


def _current(msg: Message, site: SiteRuntime, req: JobRequest) -> HeSiteState:
    """The site's global model for this message: the initial one, or last round's sum applied.

    A job that samples sites per round sends a site the sums of the rounds it missed
    (``he-missed``, their claims in ``he-missed-claims``); one that missed round 1 starts from the
    job's initial model, which it builds itself from the job's model and seed as the coordinator
    does. A train message to a site that evaluated last round carries no sum, only its digest
    (``he-sum-digest``): the site goes on from the model it built from that sum, and refuses if it
    holds another. Every sum is opened only as the one confirmed sum of its round
    (``open_training_sum``), with its claim and confirmations (``he-claim``).
    """
    config = msg.content.config_records["config"]
    he_round = as_int(config["he-round"])
    record = msg.content.array_records["arrays"]
    if he_round == 0:
        return HeSiteState(0, arrays_from_record(record))
    state = _load_state(site, req.job_id)
    if "he-sum-digest" in config and not record:
        return check_held_sum(state, he_round=he_round, digest=str(config["he-sum-digest"]))
    if state is None and req.spec.sites_per_round is not None:
        initial = build_model(req.spec.model.as_table(), len(site.data.features), seed=req.spec.seed)
        state = HeSiteState(0, get_arrays(initial))
    if state is None:
        raise KeyMismatchError(
            f"site {site.name!r} has no model state for job {req.job_id} (it missed the start)"
        )

    def aggregator() -> Aggregator:
        return make_aggregator(req.spec.aggregator.name, **req.spec.aggregator.options)

    missed = msg.content.array_records.get("he-missed")
    claims = json.loads(str(config.get("he-missed-claims", "{}")))
    sums = (
        [
            (k, opaque_from_record(missed, f"r{k}"), claims.get(str(k), {}))
            for k in range(state.round + 1, he_round)
        ]
        if missed
        else []
    )
    current = {"claim": str(config.get("he-claim", "")), "tags": str(config.get("he-tags", "{}"))}
    secret, check = site.he_secret(), site.sums.check(req)
    for k, total, entry in [*sums, (he_round, opaque_from_record(record), current)]:
        claim, tags = (
            SumClaim.from_wire(str(entry.get("claim", ""))),
            tags_from_wire(str(entry.get("tags", "{}"))),
        )
        state = apply_encrypted_sum(
            state,
            total,
            functools.partial(
                open_training_sum, total, claim, tags, server_round=k, secret=secret, check=check
            ),
            server_round=k,
            make_aggregator=aggregator,
        )
    return state


def _sums_applied(msg: Message, site: SiteRuntime, req: JobRequest, server_round: int) -> HeSiteState:
    """``_current``, where a sum that fails its checks is a refusal before any charge, audited."""
    try:
        return _current(msg, site, req)
    except FedcoreError as err:
        site.guard.record("refuse", req.job_id, f"round {server_round}: {err}", actor="coordinator")
        raise


def he_train(msg: Message, context: Context, site: SiteRuntime, req: JobRequest) -> Message:
    """Open last round's sum, authorize, train from the resulting model, send the encrypted update
    (its weight and marker in the trailer)."""
    assert req.spec.he is not None
    server_round = as_int(msg.content.config_records["config"]["server-round"])
    with site.answering(req, "train", server_round):
        stored = site.replay(req, "train", server_round, actor="coordinator")
        if stored is not None:  # released before this job's coordinator restarted: the same ciphertext
            data, metrics = stored.arrays[0].astype(np.uint8).tobytes(), stored.metrics
        else:
            secret = site.he_secret()  # a site without its key refuses before any charge, naming the fix
            state = _sums_applied(msg, site, req, server_round)
            plan = site.authorize_once(req, "train", server_round, actor="coordinator")
            with site.computing(req, "train", server_round):
                result = site.local_update(
                    req, plan, server_round=server_round, global_arrays=state.global_arrays
                )
                weight = 1.0 if plan.uniform_weight else result.weight / req.spec.he.weight_scale
                t0 = time.perf_counter()
                data = encrypt_delta(
                    secret, result.delta, weight=weight, job_id=req.job_id,
                    server_round=server_round, site=site.name,
                )  # fmt: skip
                seconds = time.perf_counter() - t0
                _save_state(context, site, req.job_id, state)
                metrics = {**result.metrics, "num-examples": result.weight, "he_weight": weight}
                metrics["he_encrypt_seconds"] = seconds
                reply = StoredReply((np.frombuffer(data, dtype=np.uint8),), metrics)
                site.replies.save(req.job_id, req.digest, "train", server_round, reply)
    return site_reply(
        msg,
        site.name,
        site.guard.ledger.audit_head(),
        {"arrays": opaque_to_record(data), "metrics": metrics_record(metrics)},
    )


def he_evaluate(msg: Message, context: Context, site: SiteRuntime, req: JobRequest) -> Message:
    """Open this round's encrypted sum, authorize, score the model; keep it after the last round."""
    config = msg.content.config_records["config"]
    server_round = as_int(config["server-round"])
    with site.answering(req, "evaluate", server_round):
        stored = site.replay(req, "evaluate", server_round, actor="coordinator")
        if stored is not None:  # its state already holds this round's model (saved before it scored)
            scores = stored.metrics
        else:
            state = _sums_applied(msg, site, req, server_round)
            plan = site.authorize_once(req, "evaluate", server_round, actor="coordinator")
            with site.computing(req, "evaluate", server_round):
                _save_state(context, site, req.job_id, state)
                scores = site.scores(req, plan, state.global_arrays)
                site.replies.save(req.job_id, req.digest, "evaluate", server_round, StoredReply((), scores))
                if bool(config.get("final", False)):
                    out = site.guard.paths.folder / "model.npz"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(out, *state.global_arrays)
    return site_reply(msg, site.name, site.guard.ledger.audit_head(), {"metrics": metrics_record(scores)})

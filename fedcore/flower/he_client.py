"""ClientApp handlers for HE jobs: keep the site's global model in the node's state, decrypt sums,
encrypt updates. The site logic itself is in ``fedcore.he.site``; the guard runs first."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message

from fedcore.aggregators import Aggregator, make_aggregator
from fedcore.clients.site import SiteRuntime
from fedcore.config.job import JobRequest
from fedcore.errors import KeyMismatchError
from fedcore.flower.serde import (
    arrays_from_record,
    as_int,
    metrics_record,
    opaque_from_record,
    opaque_to_record,
    site_reply,
)
from fedcore.he.site import HeSiteState, apply_encrypted_sum, encrypt_delta
from fedcore.models import build_model, get_arrays

__all__ = ["he_evaluate", "he_train"]


def _load_state(context: Context, job_id: str) -> HeSiteState | None:
    meta = context.state.config_records.get("he-meta")
    if meta is None or str(meta["job"]) != job_id:
        return None
    glob = arrays_from_record(context.state.array_records["he-global"])
    opt = arrays_from_record(context.state.array_records["he-opt"])
    return HeSiteState(as_int(meta["round"]), glob, opt)


def _save_state(context: Context, job_id: str, state: HeSiteState) -> None:
    context.state["he-meta"] = ConfigRecord({"job": job_id, "round": state.round})
    context.state["he-global"] = ArrayRecord([np.asarray(a) for a in state.global_arrays])
    context.state["he-opt"] = ArrayRecord([np.asarray(a) for a in state.optimizer_state])


def _current(msg: Message, context: Context, site: SiteRuntime, req: JobRequest) -> HeSiteState:
    """The site's global model for this message: the initial one, or last round's sum applied.

    A job that samples sites per round sends a site the sums of the rounds it missed
    (``he-missed``); one that missed round 1 starts from the job's initial model, which it builds
    itself from the job's model and seed as the coordinator does.
    """
    he_round = as_int(msg.content.config_records["config"]["he-round"])
    record = msg.content.array_records["arrays"]
    if he_round == 0:
        return HeSiteState(0, arrays_from_record(record))
    state = _load_state(context, req.job_id)
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
    sums = (
        [(k, opaque_from_record(missed, f"r{k}")) for k in range(state.round + 1, he_round)] if missed else []
    )
    for k, total in [*sums, (he_round, opaque_from_record(record))]:
        state = apply_encrypted_sum(
            state,
            total,
            server_round=k,
            secret=site.he_secret(),
            make_aggregator=aggregator,
            min_sites=site.site.policy.min_sites,
        )
    return state


def he_train(msg: Message, context: Context, site: SiteRuntime, req: JobRequest) -> Message:
    """Authorize, decrypt last round's sum, train from the resulting model, send the encrypted update."""
    assert req.spec.he is not None
    server_round = as_int(msg.content.config_records["config"]["server-round"])
    plan = site.authorize(req, "train", server_round, actor="coordinator")
    state = _current(msg, context, site, req)
    result = site.local_update(req, plan, server_round=server_round, global_arrays=state.global_arrays)
    weight = 1.0 if plan.uniform_weight else result.weight / req.spec.he.weight_scale
    data = encrypt_delta(site.he_secret(), result.delta, weight=weight)
    _save_state(context, req.job_id, state)
    metrics = metrics_record({**result.metrics, "num-examples": result.weight, "he_weight": weight})
    return site_reply(
        msg, site.name, site.guard.ledger.audit_head(), {"arrays": opaque_to_record(data), "metrics": metrics}
    )


def he_evaluate(msg: Message, context: Context, site: SiteRuntime, req: JobRequest) -> Message:
    """Authorize, apply this round's encrypted sum, score the model; keep it after the last round."""
    config = msg.content.config_records["config"]
    plan = site.authorize(req, "evaluate", as_int(config["server-round"]), actor="coordinator")
    state = _current(msg, context, site, req)
    _save_state(context, req.job_id, state)
    scores = site.scores(req, plan, state.global_arrays)
    if bool(config.get("final", False)):
        out = site.guard.paths.folder / "model.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, *state.global_arrays)
    return site_reply(msg, site.name, site.guard.ledger.audit_head(), {"metrics": metrics_record(scores)})

"""ClientApp handlers for HE jobs: keep the site's global model in the node's state, decrypt sums,
encrypt updates. The site logic itself is in ``fedcore.clients.he_site``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedcore.aggregators import Aggregator, make_aggregator
from fedcore.clients.job import JobPrivacy
from fedcore.clients.site import SiteRuntime, round_seed
from fedcore.clients.trainer import TrainConfig
from fedcore.errors import KeyMismatchError
from fedcore.flower.serde import (
    arrays_from_record,
    as_int,
    config_json,
    metrics_record,
    opaque_from_record,
    opaque_to_record,
)
from fedcore.he.keys import SecretContext, load_secret_context
from fedcore.he.site import HeSiteState, apply_encrypted_sum, encrypt_delta, he_weight

__all__ = ["he_evaluate", "he_train"]

_SECRETS: dict[Path, SecretContext] = {}


def _secret(site: SiteRuntime, fallback: Path | None) -> SecretContext:
    path = site.policy.he_secret_key or fallback
    if path is None:
        raise KeyMismatchError(
            f"site {site.site.name!r} has no HE secret key but the job uses HE; run `fedcore keys init` "
            f"once per federation and set [privacy] he_secret_key in {site.site.path}"
        )
    if path not in _SECRETS:
        _SECRETS[path] = load_secret_context(path)
    return _SECRETS[path]


def _load_state(context: Context, job_id: str) -> HeSiteState | None:
    meta = context.state.config_records.get("he-meta")
    if meta is None or str(meta["job"]) != job_id:
        return None
    glob = arrays_from_record(context.state.array_records["he-global"])
    opt = arrays_from_record(context.state.array_records["he-opt"])
    return HeSiteState(as_int(meta["round"]), glob, opt)


def _save_state(context: Context, job_id: str, state: HeSiteState) -> None:
    import numpy as np

    context.state["he-meta"] = ConfigRecord({"job": job_id, "round": state.round})
    context.state["he-global"] = ArrayRecord([np.asarray(a) for a in state.global_arrays])
    context.state["he-opt"] = ArrayRecord([np.asarray(a) for a in state.optimizer_state])


def _aggregator_factory(cfg: ConfigRecord) -> Any:
    spec = config_json(cfg, "aggregator")

    def build() -> Aggregator:
        return make_aggregator(str(spec["name"]), **{k: v for k, v in spec.items() if k != "name"})

    return build


def _current(
    msg: Message, context: Context, site: SiteRuntime, job: JobPrivacy, secret: SecretContext
) -> HeSiteState:
    cfg = msg.content.config_records["config"]
    he_round = as_int(cfg["he-round"])
    record = msg.content.array_records["arrays"]
    if he_round == 0:
        return HeSiteState(0, arrays_from_record(record))
    state = _load_state(context, job.job_id)
    if state is None:
        raise KeyMismatchError(
            f"site {site.site.name!r} has no model state for job {job.job_id} (it missed the start)"
        )
    return apply_encrypted_sum(
        state,
        opaque_from_record(record),
        server_round=he_round,
        secret=secret,
        make_aggregator=_aggregator_factory(cfg),
    )


def he_train(msg: Message, context: Context, site: SiteRuntime, job: JobPrivacy, key: Path | None) -> Message:
    """Decrypt last round's sum, train from the resulting global model, send the encrypted update."""
    site.admit(job)  # policy, budget and audit before any decryption or training
    secret = _secret(site, key)
    cfg = msg.content.config_records["config"]
    state = _current(msg, context, site, job, secret)
    result = site.train(
        state.global_arrays,
        model_spec=config_json(cfg, "model"),
        cfg=TrainConfig.from_mapping(config_json(cfg, "train")),
        steps=as_int(cfg["local-steps"]),
        seed=round_seed(as_int(cfg["seed"]), as_int(cfg["server-round"]), site.site.name),
        job=job,
    )
    uniform = job.client_dp is not None or site.policy.client_dp is not None
    weight = he_weight(result.num_examples, weight_scale=job.he_weight_scale, uniform=uniform)
    data = encrypt_delta(secret, result.delta, weight=weight)
    _save_state(context, job.job_id, state)
    metrics = {**result.metrics, "num-examples": result.num_examples, "he_weight": weight}
    content = RecordDict(
        {
            "arrays": opaque_to_record(data),
            "metrics": metrics_record(metrics),
            "site": ConfigRecord({"site": site.site.name}),
        }
    )
    return Message(content, reply_to=msg)


def he_evaluate(
    msg: Message, context: Context, site: SiteRuntime, job: JobPrivacy, key: Path | None
) -> Message:
    """Apply this round's encrypted sum, evaluate the global model; keep it after the last round."""
    import numpy as np

    cfg = msg.content.config_records["config"]
    state = _current(msg, context, site, job, _secret(site, key))
    _save_state(context, job.job_id, state)
    metrics = site.evaluate(
        state.global_arrays,
        model_spec=config_json(cfg, "model"),
        options=config_json(cfg, "evaluate"),
    )
    if bool(cfg.get("final", False)):
        out = site.privacy.ledger_path.parent / f"{site.site.name}.model.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, *state.global_arrays)
    content = RecordDict({"metrics": metrics_record(metrics), "site": ConfigRecord({"site": site.site.name})})
    return Message(content, reply_to=msg)

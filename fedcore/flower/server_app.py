"""The coordinator as a Flower ``ServerApp`` (Message API).

A job runs in three steps: the sites describe their schemas; every site is asked to admit the job
(each plans it under its own policy and reserves its cost, or refuses with a reason); the rounds run
with the sites that accepted, when at least ``min_sites`` did. If the job stops before any round is
checkpointed the sites are told to cancel, so a site that released nothing is charged nothing; a job
that stops after a checkpointed round leaves the sites' plans in place, so that ``fedcore resume``
continues it. What the coordinator computes about privacy is for display: what a site charges comes
from its own plan.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedcore.aggregators import aggregator_state, load_aggregator_state
from fedcore.aggregators.wrappers import build_aggregator
from fedcore.algorithms import make_algorithm
from fedcore.config.job import JobRequest, JobSpec, load_job
from fedcore.config.reader import read_toml
from fedcore.errors import ConfigError, PolicyError
from fedcore.flower.checkpoint import (
    Checkpoint,
    job_stopped,
    load_checkpoint,
    save_admission,
    save_checkpoint,
)
from fedcore.flower.deployment import continue_on_stop, deployment_settings
from fedcore.flower.protocol import (
    ServerSettings,
    admit,
    cancel,
    check_he_sites,
    check_schemas,
    describe_sites,
    query,
    wait_for_nodes,
)
from fedcore.flower.secagg_server import SecAggRounds
from fedcore.flower.serde import arrays_to_record, opaque_from_record, opaque_to_record
from fedcore.flower.strategy import FedcoreStrategy, history_from_json, history_json
from fedcore.he import PublicContext, load_public_context
from fedcore.models import build_model, get_arrays
from fedcore.plugins import load_plugins

__all__ = ["make_server_app", "run_job"]

log = logging.getLogger("fedcore")


def _rejoiner(
    request: JobRequest, features: tuple[str, ...], seen: set[int], timeout: float
) -> Callable[[Grid, Mapping[int, str]], dict[int, str]]:
    """What the strategy asks before each round, with the job's ``{node: site}``: nodes that connected
    since the job started (a site's node restarted without a registered key gets a new id) are
    described and admitted again (the site's ledger already holds the job's plan) when they name a
    site of the job whose node is gone, with the job's schema. A node naming a site whose node is
    still online does not take its place (it is asked again next round: Flower sees a dead node
    gone only after two missed heartbeats)."""

    def rejoin(grid: Grid, job_sites: Mapping[int, str]) -> dict[int, str]:
        online = set(grid.get_node_ids())
        new = sorted(online - seen)
        if not new:
            return {}
        live = {site for node, site in job_sites.items() if node in online}
        names: dict[int, str] = {}
        for reply in query(grid, new, {"action": "describe"}, timeout):
            node = reply.metadata.src_node_id
            info = None if reply.has_error() else reply.content.config_records["describe"]
            site = "" if info is None else str(info["site"])
            if site in live:  # its old node is not yet seen as gone (Flower waits two heartbeats)
                continue  # asked again next round
            seen.add(node)  # otherwise each new node is asked once
            same = info is not None and json.loads(str(info["features"])) == list(features)
            if not same or site not in job_sites.values():
                why = reply.error.reason if info is None else f"site {site!r}"
                log.warning("new node %d not admitted to the running job (%s)", node, why)
                continue
            names[node] = site
        wire = {"job": request.to_wire()}
        admission = admit(grid, wire, names, timeout, job_id=request.job_id) if names else {}
        return {int(a["node"]): site for site, a in admission.items() if a["accepted"]}

    return rejoin


def _he_public(spec: JobSpec, settings: ServerSettings) -> PublicContext | None:
    """The coordinator's public context when the job uses HE (it never loads a secret key)."""
    if spec.he is None:
        return None
    path = settings.he_public_key
    if path is None and spec.he.public_key is not None:
        path = (settings.job_file.parent / spec.he.public_key).resolve()
    if path is None:
        raise ConfigError(
            f"{settings.job_file}: HE is on but the coordinator has no public key; run "
            '`fedcore keys init --out KEYS` and set [privacy.he] public_key = "KEYS/public.ctx"'
        )
    return load_public_context(path)


def run_job(grid: Grid, settings: ServerSettings) -> FedcoreStrategy:
    """Run one job against whatever sites ``grid`` reaches; write outputs to ``out_dir``."""
    started = time.perf_counter()
    spec = load_job(settings.job_file, settings.overrides)
    if spec.attack is not None and settings.tamper is None:
        raise ConfigError(
            f"{settings.job_file}: [attack] is for simulations only (`fedcore run`); a coordinator of real "
            "sites runs no attack (and the sites refuse the job): remove the section"
        )
    resumed = load_checkpoint(settings.resume) if settings.resume is not None else None
    he_public = _he_public(spec, settings)
    check_he_sites(he_public, settings.expected_sites)  # before waiting for anyone
    nodes = wait_for_nodes(grid, settings.expected_sites, settings.timeout)
    check_he_sites(he_public, len(nodes))  # every connected site is asked, so each may be summed
    infos = describe_sites(grid, nodes, settings.timeout)
    features = check_schemas(infos)
    names = {int(i["node"]): str(i["site"]) for i in infos}
    request = (  # a resumed job keeps its id and digest: the sites' plans already hold it
        resumed.resumed_request(spec)
        if resumed is not None
        else JobRequest(f"{spec.name}-{uuid.uuid4().hex[:12]}", len(nodes), spec)
    )
    wire, wait = {"job": request.to_wire()}, spec.admission_wait  # manual approval: sites may take a while
    admission = admit(grid, wire, names, settings.timeout, job_id=request.job_id, wait=wait)
    accepted = sorted(int(a["node"]) for a in admission.values() if a["accepted"])
    if resumed is not None:
        admission = _first_plans(admission, resumed.admission)
    if settings.out_dir is not None:  # who accepted, with their plans, and who refused and why
        settings.out_dir.mkdir(parents=True, exist_ok=True)
        (settings.out_dir / "admission.json").write_text(json.dumps(admission, indent=1, default=str))
    if len(accepted) < spec.min_sites:
        cancel(grid, request.job_id, accepted, settings.timeout)
        reasons = "\n  ".join(
            f"{s}: {a['reason']}" for s, a in sorted(admission.items()) if not a["accepted"]
        )
        raise PolicyError(
            f"job {request.job_id} refused, nothing was run: {len(accepted)} of {len(nodes)} sites accepted, "
            f"min_sites is {spec.min_sites}; reservations were cancelled, no site was charged:\n  {reasons}"
        )
    algorithm = make_algorithm(spec.algorithm.name, spec.algorithm.options)
    aggregator = build_aggregator(spec.aggregator.name, spec.aggregator.options)
    strategy = FedcoreStrategy(
        algorithm.server(aggregator, num_sites=len(accepted)) if he_public is None else None,
        he_public=he_public,
        num_rounds=spec.rounds,
        site_names=names,
        node_ids=accepted,
        min_sites=spec.min_sites,
        max_update_norm=spec.max_update_norm,
        max_norm_ratio=spec.max_norm_ratio,
        on_round=settings.on_round,
        sites_per_round=spec.sites_per_round,
        rng=random.Random(spec.seed),  # who is sampled is no secret: reproducible from the job's seed
        first_round=1 if resumed is None else resumed.round + 1,
        job_id=request.job_id,
        timeout=settings.timeout,
        secagg=None if spec.secagg is None else SecAggRounds(request, settings.timeout),
    )
    strategy.rejoin = _rejoiner(request, features, set(nodes), settings.timeout)
    strategy.extras_up, strategy.tamper = algorithm.extras.up, settings.tamper
    for _ in range(2 * (strategy.first_round - 1)):  # a resumed job samples as the uninterrupted one would
        strategy.sample()
    checkpointed = [0 if resumed is None else resumed.round]  # the last round a checkpoint holds
    if settings.out_dir is not None:
        strategy.on_checkpoint = _checkpointer(settings.out_dir, request, strategy, admission, checkpointed)
    initial = _initial_arrays(spec, len(features), strategy, resumed)
    config = ConfigRecord({"job": request.to_wire()})
    try:
        result_arrays = initial
        if strategy.first_round <= spec.rounds:  # a checkpoint of the last round has nothing left to run
            result_arrays = strategy.start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=spec.rounds - strategy.first_round + 1,
                timeout=settings.timeout,
                train_config=config,
                evaluate_config=ConfigRecord(dict(config)),
            ).arrays
    except BaseException as err:
        if settings.out_dir is None or checkpointed[0] == 0:  # nothing to resume: release nothing more
            cancel(grid, request.job_id, accepted, settings.timeout)
            raise
        raise job_stopped(request, checkpointed[0], settings.out_dir, err) from err
    if spec.sites_per_round is not None and spec.sites_per_round < len(accepted):
        # the job ended: a site sampled out of every round drops its reservation (charged nothing), the
        # others stop holding budget for the rounds they were not asked (charged only those answered)
        cancel(grid, request.job_id, accepted, settings.timeout)
    if settings.out_dir is not None:
        _write_outputs(settings.out_dir, request, infos, admission, strategy, result_arrays)
        if settings.write_summary:
            from fedcore.reporting.released import build_released_summary
            from fedcore.reporting.report import write_report

            summary = build_released_summary(spec, settings.out_dir, time.perf_counter() - started)
            (settings.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            write_report(settings.out_dir, summary)
    return strategy


def _initial_arrays(
    spec: JobSpec, num_features: int, strategy: FedcoreStrategy, resumed: Checkpoint | None
) -> ArrayRecord:
    """Round 1's model (seeded), or for a resumed job the checkpoint's model or HE sum, with the
    aggregator's state and the history of the rounds already run restored into ``strategy``."""
    if resumed is None:
        return arrays_to_record(get_arrays(build_model(spec.model.as_table(), num_features, seed=spec.seed)))
    load_aggregator_state(strategy.aggregator, resumed.optimizer)
    strategy.history = history_from_json(resumed.history)
    strategy.audit_heads = dict(resumed.audit_heads)
    log.info("resuming job %s after round %d", resumed.request.job_id, resumed.round)
    if strategy.he is not None:
        if resumed.he_at is not None:
            strategy.he.restore(resumed.he_held, resumed.he_at, resumed.he_claims, strategy.site_names)
        return opaque_to_record(resumed.he_sum)
    return ArrayRecord(list(resumed.model))


def _first_plans(now: dict[str, dict[str, Any]], first: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A resumed job's admission, each site's plan as first admitted: that plan is what the site
    charged (planned again, a value this job already charged, e.g. the noisy size, reads as paid)."""
    return {
        site: {**a, "plan": first[site]["plan"]}
        if a["accepted"] and first.get(site, {}).get("accepted")
        else a
        for site, a in now.items()
    }


def _checkpointer(
    out: Path,
    request: JobRequest,
    strategy: FedcoreStrategy,
    admission: Mapping[str, Any],
    checkpointed: list[int],
) -> Callable[[int, ArrayRecord], None]:
    """What the strategy calls after every round: write the coordinator's state (atomically); the
    admission, the same every round, is written once here and named by each checkpoint. The round
    written is kept in ``checkpointed[0]``."""
    admission_file = save_admission(out, admission)

    def checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        he = strategy.he
        held, at = he.catch_up(strategy.site_names) if he is not None else ({}, None)
        save_checkpoint(
            out,
            Checkpoint(
                request,
                server_round,
                model=() if he is not None else tuple(arrays.to_numpy_ndarrays()),
                he_sum=opaque_from_record(arrays) if he is not None else b"",
                optimizer=aggregator_state(strategy.aggregator),
                history=history_json(strategy.history),
                audit_heads=strategy.audit_heads,
                admission_file=admission_file,
                he_held=held,
                he_at=at,
                he_claims=dict(he.claims) if he is not None else {},
            ),
        )
        checkpointed[0] = server_round

    return checkpoint


def _write_outputs(
    out: Path,
    request: JobRequest,
    infos: list[dict[str, Any]],
    admission: dict[str, dict[str, Any]],
    strategy: FedcoreStrategy,
    arrays: ArrayRecord,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if strategy.he_public is None:
        np.savez(out / "model.npz", *arrays.to_numpy_ndarrays())
    else:  # the coordinator holds only the encrypted last sum; the sites hold the model
        (out / "last_sum.he").write_bytes(opaque_from_record(arrays))
    body = {
        "job": request.spec.table,
        "job_id": request.job_id,
        "digest": request.digest,
        "sites": infos,
        "admission": admission,
        "audit_heads": strategy.audit_heads,
        "rounds": history_json(strategy.history),
        **({"attack": request.spec.attack.as_dict()} if request.spec.attack is not None else {}),
    }
    (out / "metrics.json").write_text(json.dumps(body, indent=1, default=str))


def make_server_app(app_dir: Path | None = None, settings: ServerSettings | None = None) -> ServerApp:
    """Build the coordinator. ``settings`` (simulation) or the run config (``flwr run``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        chosen = settings
        if app_dir is not None:
            load_plugins(app_dir)  # the app's aggregators and mechanisms, before its job is read
        if chosen is None:
            if app_dir is None:
                raise ConfigError("make_server_app needs app_dir or settings")
            chosen = deployment_settings(app_dir, dict(context.run_config))  # flwr run
        from fedcore.analytics.query import is_statistics, load_queries

        if is_statistics(read_toml(chosen.job_file)):
            from fedcore.flower.statistics import run_statistics

            run_statistics(grid, chosen, load_queries(chosen.job_file))
        else:
            with continue_on_stop(chosen) if settings is None else nullcontext():
                run_job(grid, chosen)

    return app

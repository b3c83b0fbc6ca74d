"""The coordinator as a Flower ``ServerApp`` (Message API)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedcore.aggregators import Aggregator, MeanAggregator, make_aggregator
from fedcore.clients.job import JobPrivacy
from fedcore.config import JobConfig, load_job
from fedcore.errors import ConfigError, SchemaError
from fedcore.flower.serde import arrays_to_record, opaque_from_record
from fedcore.flower.strategy import FedcoreStrategy, RoundLog, history_json
from fedcore.he.keys import PublicContext, load_public_context
from fedcore.models import build_model, get_arrays
from fedcore.privacy.client_dp import ClientLevelDP
from fedcore.privacy.mechanisms import make_rng

__all__ = ["ServerSettings", "make_server_app"]

log = logging.getLogger("fedcore")


@dataclass
class ServerSettings:
    """What the coordinator needs besides the Flower context (given directly in simulation)."""

    job_file: Path
    overrides: Sequence[str] = ()
    out_dir: Path | None = None
    min_sites: int = 1
    timeout: float = 600.0
    on_round: Callable[[RoundLog], None] | None = None
    he_public_key: Path | None = None

    @classmethod
    def from_run_config(cls, app_dir: Path, run_config: dict[str, Any]) -> ServerSettings:
        """``flwr run`` path: read ``[tool.flwr.app.config]`` (job, set, out-dir, min-sites)."""
        sets = [s for s in str(run_config.get("set", "")).split(";") if s.strip()]
        for key in ("rounds", "seed"):
            if key in run_config:
                sets.append(f"job.{key}={run_config[key]}")
        sites = [s for s in str(run_config.get("sites", "")).split(",") if s.strip()]
        out = run_config.get("out-dir")
        return cls(
            job_file=app_dir / str(run_config.get("job", "jobs/default.toml")),
            overrides=sets,
            out_dir=Path(str(out)) if out else None,
            min_sites=int(run_config.get("min-sites", len(sites) or 1)),
        )


def _wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise ConfigError(
                f"only {len(nodes)} of min_sites={n} site nodes connected within {timeout:.0f} s; "
                "start the missing nodes or lower min-sites"
            )
        time.sleep(0.5)
    return nodes


def _describe_sites(grid: Grid, nodes: list[int], timeout: float) -> list[dict[str, Any]]:
    msgs = [
        Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in nodes
    ]
    infos = []
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if reply.has_error():
            raise ConfigError(f"a site could not load its data: {reply.error.reason}")
        infos.append({**dict(reply.content.config_records["site"]), "node": reply.metadata.src_node_id})
    if len(infos) < len(nodes):
        raise ConfigError(f"only {len(infos)} of {len(nodes)} sites answered the schema query")
    return sorted(infos, key=lambda i: str(i["site"]))


def check_schemas(infos: list[dict[str, Any]]) -> tuple[str, ...]:
    """All sites must share one schema; returns the feature names."""
    by_fp: dict[str, list[str]] = {}
    for i in infos:
        by_fp.setdefault(str(i["schema"]), []).append(str(i["site"]))
    if len(by_fp) > 1:
        detail = "; ".join(
            f"{sites} use features [{next(str(i['features']) for i in infos if i['site'] == sites[0])}]"
            for sites in by_fp.values()
        )
        raise SchemaError(
            f"the sites' schemas differ: {detail}. Every site file must declare the same label, "
            "feature columns, types and categorical levels"
        )
    return tuple(str(infos[0]["features"]).split(","))


def _train_config(job: JobConfig, privacy: JobPrivacy | None = None) -> ConfigRecord:
    train = job.train_section()
    record = ConfigRecord(
        {
            "model": json.dumps(job.section("model")),
            "train": json.dumps(train),
            "local-steps": int(train["local_steps"]),
            "seed": job.seed,
            "aggregator": json.dumps(job.section("aggregator")),
        }
    )
    if privacy is not None:
        record["privacy"] = privacy.to_json()
    return record


def _he_public(job: JobConfig, settings: ServerSettings) -> PublicContext | None:
    """The coordinator's public context when the job uses HE (it never loads a secret key)."""
    he = dict(job.raw.get("privacy", {}).get("he", {}))
    if not he.get("enabled", False):
        return None
    path = settings.he_public_key
    if path is None and "public_key" in he:
        path = (settings.job_file.parent / str(he["public_key"])).resolve()
    if path is None:
        raise ConfigError(
            f"{settings.job_file}: HE is on but the coordinator has no public key; run "
            '`fedcore keys init --out KEYS` and set [privacy.he] public_key = "KEYS/public.ctx"'
        )
    return load_public_context(path)


def _make_aggregator(job: JobConfig, privacy: JobPrivacy) -> Aggregator:
    """The job's aggregator, wrapped in client-level DP when the job asks for it."""
    agg_opts = {k: v for k, v in job.section("aggregator").items() if k != "name"}
    inner = make_aggregator(str(job.section("aggregator")["name"]), **agg_opts)
    cdp = privacy.client_dp
    if cdp is None:
        return inner
    if not isinstance(inner, MeanAggregator):
        raise ConfigError(f"client-level DP needs a mean-based aggregator, got {type(inner).__name__}")
    rng = make_rng(None if privacy.secure_noise else job.seed, secure=privacy.secure_noise)
    return ClientLevelDP(
        inner,
        clipping_norm=cdp.clipping_norm,
        noise_multiplier=cdp.noise_multiplier,
        mode=cdp.mode,
        rng=rng,
        num_sites=privacy.num_sites,
        clipping=cdp.clipping,
        expected_clients=privacy.num_sites,
    )


def run_job(grid: Grid, settings: ServerSettings) -> FedcoreStrategy:
    """Run one job against whatever sites ``grid`` reaches; write outputs to ``out_dir``."""
    job = load_job(settings.job_file, settings.overrides)
    nodes = _wait_for_nodes(grid, settings.min_sites, settings.timeout)
    infos = _describe_sites(grid, nodes, settings.timeout)
    features = check_schemas(infos)
    min_sites = int(job.raw["job"].get("min_sites", 1))
    privacy = JobPrivacy.from_job(
        job.raw, job_id=f"{job.name}-{uuid.uuid4().hex[:12]}", num_sites=len(nodes), min_sites=min_sites
    )
    model = build_model(job.section("model"), len(features), seed=job.seed)
    he_public = _he_public(job, settings)
    strategy = FedcoreStrategy(
        _make_aggregator(job, privacy) if he_public is None else make_aggregator("fedavg"),
        he_public=he_public,
        num_rounds=job.rounds,
        site_names={int(i["node"]): str(i["site"]) for i in infos},
        node_ids=nodes,
        min_sites=min_sites,
        max_update_norm=job.raw["job"].get("max_update_norm"),
        on_round=settings.on_round,
    )
    train_cfg = _train_config(job, privacy)
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays_to_record(get_arrays(model)),
        num_rounds=job.rounds,
        timeout=settings.timeout,
        train_config=train_cfg,
        evaluate_config=ConfigRecord(
            {
                "model": train_cfg["model"],
                "evaluate": json.dumps(job.section("evaluate")),
                "privacy": privacy.to_json(),
                "aggregator": train_cfg["aggregator"],
            }
        ),
    )
    if settings.out_dir is not None:
        _write_outputs(settings.out_dir, job, privacy.job_id, infos, strategy, result.arrays)
    return strategy


def _write_outputs(
    out: Path,
    job: JobConfig,
    job_id: str,
    infos: list[dict[str, Any]],
    strategy: FedcoreStrategy,
    arrays: ArrayRecord,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if strategy.he_public is None:
        np.savez(out / "model.npz", *arrays.to_numpy_ndarrays())
    else:  # the coordinator holds only the encrypted last sum; the sites hold the model
        (out / "last_sum.he").write_bytes(opaque_from_record(arrays))
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "job": job.raw,
                "job_id": job_id,
                "sites": infos,
                "rounds": history_json(strategy.history),
            },
            indent=1,
            default=str,
        )
    )


def make_server_app(app_dir: Path | None = None, settings: ServerSettings | None = None) -> ServerApp:
    """Build the coordinator. ``settings`` (simulation) or the run config (``flwr run``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        chosen = settings
        if chosen is None:
            if app_dir is None:
                raise ConfigError("make_server_app needs app_dir or settings")
            chosen = ServerSettings.from_run_config(app_dir, dict(context.run_config))
        run_job(grid, chosen)

    return app

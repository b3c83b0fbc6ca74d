"""The site node as a Flower ``ClientApp`` (Message API): translate messages to ``SiteRuntime``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcore.clients.job import JobPrivacy
from fedcore.clients.site import SiteRuntime, round_seed
from fedcore.clients.trainer import TrainConfig
from fedcore.errors import ConfigError
from fedcore.flower.he_client import he_evaluate, he_train
from fedcore.flower.serde import (
    arrays_from_record,
    arrays_to_record,
    as_int,
    config_json,
    metrics_record,
)

__all__ = ["make_client_app", "resolve_site_file"]


def resolve_site_file(context: Context, app_dir: Path | None, sites: Sequence[Path]) -> Path:
    """Which site file this node serves.

    Deployment: ``flower-supernode --node-config "site-file='/etc/fedcore/site.toml'"``.
    Simulation: the app's site list, indexed by the node's ``partition-id``.
    """
    node = context.node_config
    if "site-file" in node:
        return Path(str(node["site-file"]))
    listed = list(sites)
    if not listed and app_dir is not None and "sites" in context.run_config:
        listed = [app_dir / s.strip() for s in str(context.run_config["sites"]).split(",")]
    if "partition-id" in node and listed:
        pid = int(node["partition-id"])
        if pid < len(listed):
            return listed[pid]
    raise ConfigError(
        "this node does not know its site file: start it with "
        "--node-config \"site-file='/path/to/site.toml'\" (node config was "
        f"{dict(node)})"
    )


def make_client_app(
    app_dir: Path | None = None,
    sites: Sequence[Path] = (),
    state_dir: Path | None = None,
    he_secret_key: Path | None = None,
) -> ClientApp:
    """Build the site node's ClientApp.

    ``sites`` (simulation) maps partition ids to site files; ``state_dir`` (simulation: the run
    directory) holds the ledgers and audit logs unless a site file names its own paths. A real
    node takes ``--node-config "site-file='...' state-dir='...'"``.
    """
    app = ClientApp()

    def runtime(context: Context) -> SiteRuntime:
        node_state = context.node_config.get("state-dir")
        where = Path(str(node_state)) if node_state else state_dir
        return SiteRuntime.load(resolve_site_file(context, app_dir, sites), where)

    @app.query()
    def describe(msg: Message, context: Context) -> Message:
        info = runtime(context).describe()
        return Message(RecordDict({"site": ConfigRecord(info)}), reply_to=msg)

    def job_of(msg: Message) -> JobPrivacy | None:
        cfg = msg.content.config_records["config"]
        return JobPrivacy.from_json(str(cfg["privacy"])) if "privacy" in cfg else None

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site = runtime(context)
        job = job_of(msg)
        if job is not None and job.he:
            return he_train(msg, context, site, job, he_secret_key)
        cfg = msg.content.config_records["config"]
        spec = config_json(cfg, "model")
        result = site.train(
            arrays_from_record(msg.content.array_records["arrays"]),
            model_spec=spec,
            cfg=TrainConfig.from_mapping(config_json(cfg, "train")),
            steps=as_int(cfg["local-steps"]),
            seed=round_seed(as_int(cfg["seed"]), as_int(cfg["server-round"]), site.site.name),
            job=job,
        )
        metrics = {**result.metrics, "num-examples": result.num_examples}
        content = RecordDict(
            {
                "arrays": arrays_to_record(result.delta),
                "metrics": metrics_record(metrics),
                "site": ConfigRecord({"site": site.site.name}),
            }
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        site = runtime(context)
        job = job_of(msg)
        if job is not None and job.he:
            return he_evaluate(msg, context, site, job, he_secret_key)
        cfg = msg.content.config_records["config"]
        metrics = site.evaluate(
            arrays_from_record(msg.content.array_records["arrays"]),
            model_spec=config_json(cfg, "model"),
            options=config_json(cfg, "evaluate"),
        )
        content = RecordDict(
            {
                "metrics": metrics_record(metrics),
                "site": ConfigRecord({"site": site.site.name}),
            }
        )
        return Message(content, reply_to=msg)

    return app

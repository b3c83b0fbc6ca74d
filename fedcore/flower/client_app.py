"""The site node as a Flower ``ClientApp`` (Message API): translate messages to ``SiteRuntime`` calls.

Messages (``config`` record): ``action`` for queries (``describe``, ``admit``, ``cancel``,
``confirm`` a sum under HE; for statistics also ``answer`` and ``decrypt``), ``job`` (the
coordinator's ``JobRequest``, re-validated here) or ``statistics`` (its ``QueryRequest``),
``server-round``. A refusal of a train or evaluate
request is an error reply naming the reason; a refused admission is an answer (``accepted`` false)
so the coordinator can report every site's reason; one awaiting the site operator's approval also
says ``pending`` (an older coordinator reads it as a refusal).
"""

from __future__ import annotations

import functools
import json
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedcore.analytics.site import StatisticsPlan
from fedcore.clients.local import SimulatedSite
from fedcore.clients.runtime import SiteRuntime
from fedcore.config.job import JobRequest
from fedcore.config.site import load_site
from fedcore.errors import ApprovalPendingError, ConfigError, FedcoreError
from fedcore.flower.extras import extras_from_content, extras_to_records
from fedcore.flower.he_client import he_evaluate, he_train
from fedcore.flower.secagg_client import SECAGG_ACTIONS, secagg_query, secagg_train
from fedcore.flower.serde import (
    arrays_from_record,
    arrays_to_record,
    as_int,
    metrics_record,
    opaque_from_record,
    opaque_to_record,
    site_reply,
)
from fedcore.plugins import load_plugins
from fedcore.site.guard import state_paths
from fedcore.site.plan import SitePlan
from fedcore.site.sums import SumClaim, tags_from_wire

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


def _reply(
    msg: Message, site: SiteRuntime, records: Mapping[str, ArrayRecord | ConfigRecord | MetricRecord]
) -> Message:
    return site_reply(msg, site.name, site.guard.ledger.audit_head(), records)


def _site_folder(
    context: Context, app_dir: Path | None, sites: Sequence[Path], state_dir: Path | None
) -> tuple[str, Path | None, Path | None]:
    """(site name, site file, state folder) as far as they can be known (for error replies)."""
    try:
        site_file = resolve_site_file(context, app_dir, sites)
    except FedcoreError:
        return "?", None, None
    try:
        site = load_site(site_file)
    except FedcoreError:
        return site_file.stem, site_file, None
    node_state = context.node_config.get("state-dir")
    return site.name, site_file, state_paths(site, Path(str(node_state)) if node_state else state_dir).folder


def _error_reply(msg: Message, err: BaseException, where: tuple[str, Path | None, Path | None]) -> Message:
    """One clean line for the coordinator; the full traceback into the site's own ``node.log``."""
    name, site_file, folder = where
    text = str(err) if isinstance(err, FedcoreError) else f"internal error ({type(err).__name__}: {err})"
    text = text.removeprefix(f"site {name!r} ").removeprefix(f"site {name!r}: ")
    log = None if folder is None or not folder.is_dir() else folder / "node.log"
    if log is not None:
        stamp = datetime.now(UTC).isoformat()
        with log.open("a") as fh:
            fh.write(f"--- {stamp} {msg.metadata.message_type}\n{traceback.format_exc()}\n")
    if not isinstance(err, FedcoreError) and log is not None:
        text += f"; traceback in {log}"
    return Message(
        Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"site {name!r} ({site_file}): {text}"), reply_to=msg
    )


Handler = Callable[[Message, Context], Message]


@functools.lru_cache(maxsize=4)
def _site_list(text: str) -> tuple[Path, ...]:
    return tuple(Path(line) for line in text.split("\n") if line)


class _Site:
    """Where a node's site file and state are (simulation: ``sites`` by partition id, ``state_dir``).

    The handlers below are methods of module-level classes, not closures: Ray pickles the ClientApp
    with every message it sends to a worker, and pickles a closure's code by value (~1.3 ms per
    message, against ~0.1 ms for references to importable classes). For the same reason the site
    list travels as one string, parsed once per process: pickling 1,000 ``Path`` objects cost
    ~25 ms per message at 1,000 simulated sites (one string: ~0.05 ms).
    """

    def __init__(
        self,
        app_dir: Path | None,
        sites: Sequence[Path],
        state_dir: Path | None,
        simulation: SimulatedSite | None = None,
    ) -> None:
        self.app_dir, self.state_dir, self.simulation = app_dir, state_dir, simulation
        self._sites = "\n".join(map(str, sites))

    @property
    def sites(self) -> tuple[Path, ...]:
        return _site_list(self._sites)

    def runtime(self, context: Context) -> SiteRuntime:
        if self.app_dir is not None:
            load_plugins(self.app_dir)  # the app's mechanisms and aggregators, in this (worker) process
        node_state = context.node_config.get("state-dir")
        where = Path(str(node_state)) if node_state else self.state_dir
        site = SiteRuntime.load(resolve_site_file(context, self.app_dir, self.sites), where)
        site.simulation = self.simulation  # None on a node: a simulated attack is refused there
        return site


class _Answering:
    """A handler whose every failure becomes an error reply with one clean line (never a traceback)."""

    def __init__(self, where: _Site, handler: Callable[[_Site, Message, Context], Message]) -> None:
        self.where, self.handler = where, handler

    def __call__(self, msg: Message, context: Context) -> Message:
        try:
            return self.handler(self.where, msg, context)
        except Exception as err:  # a site answers; it does not crash the federation
            w = self.where
            return _error_reply(msg, err, _site_folder(context, w.app_dir, w.sites, w.state_dir))


def _request(msg: Message, site: SiteRuntime) -> JobRequest:
    return site.request(str(msg.content.config_records["config"]["job"]))


def _query(where: _Site, msg: Message, context: Context) -> Message:
    site = where.runtime(context)
    config = msg.content.config_records["config"]
    action = str(config.get("action", "describe"))
    if action == "describe":
        return _reply(msg, site, {"describe": ConfigRecord(dict(site.describe()))})
    if action == "cancel":
        status = site.cancel(str(config["job-id"]))
        return _reply(msg, site, {"cancel": ConfigRecord({"status": str(status)})})
    if action in ("answer", "decrypt"):
        return _statistics(msg, site, action)
    if action in SECAGG_ACTIONS:
        return secagg_query(msg, site, action)
    if action == "confirm":
        claim = SumClaim.from_wire(str(config["claim"]))
        request = (
            site.statistics.request(str(config["statistics"]))
            if "statistics" in config
            else _request(msg, site)
        )
        tag = site.sums.confirm(request, claim, actor="coordinator")
        return _reply(msg, site, {"confirm": ConfigRecord({"tag": tag})})
    if action != "admit":
        raise ConfigError(
            f"unknown query action {action!r}; a fedcore site answers describe, admit, cancel, confirm, "
            "answer, decrypt"
        )
    try:
        if "statistics" in config:
            plan: SitePlan | StatisticsPlan = site.statistics.admit(
                site.statistics.request(str(config["statistics"]))
            )
        else:
            plan = site.admit(_request(msg, site))
    except FedcoreError as err:  # pending: the site's operator has not decided yet (ask again later)
        answer = ConfigRecord({"accepted": False, "reason": str(err)})
        if isinstance(err, ApprovalPendingError):
            answer["pending"] = True
        return _reply(msg, site, {"admission": answer})
    summary = json.dumps({**plan.summary(), **site.guard.budget_report()})
    return _reply(msg, site, {"admission": ConfigRecord({"accepted": True, "plan": summary})})


def _statistics(msg: Message, site: SiteRuntime, action: str) -> Message:
    config = msg.content.config_records["config"]
    req = site.statistics.request(str(config["statistics"]))
    if action == "decrypt":
        total = opaque_from_record(msg.content.array_records["sum"])
        claim, tags = SumClaim.from_wire(str(config["claim"])), tags_from_wire(str(config["tags"]))
        totals = site.statistics.decrypt(req, as_int(config["index"]), total, claim, tags)
        return _reply(msg, site, {"decrypted": ConfigRecord({"totals": json.dumps(totals)})})
    answers, sealed = site.statistics.answer(req)
    budget = json.dumps(site.guard.budget_report())  # after this answer's charge
    records: dict[str, ArrayRecord | ConfigRecord | MetricRecord] = {
        "statistics": ConfigRecord({"answers": json.dumps(answers), "budget": budget})
    }
    if sealed:
        record = ArrayRecord()
        for i, data in enumerate(sealed):
            opaque_to_record(data, f"q{i}", record)
        records["sealed"] = record
    return _reply(msg, site, records)


def _train(where: _Site, msg: Message, context: Context) -> Message:
    site = where.runtime(context)
    req = _request(msg, site)
    if req.spec.he is not None:
        return he_train(msg, context, site, req)
    if req.spec.secagg is not None:
        return secagg_train(msg, context, site, req)
    result = site.train(
        req,
        server_round=as_int(msg.content.config_records["config"]["server-round"]),
        global_arrays=arrays_from_record(msg.content.array_records["arrays"]),
        received=extras_from_content(msg.content),
    )
    metrics = metrics_record({**result.metrics, "num-examples": result.weight})
    records: dict[str, ArrayRecord | ConfigRecord | MetricRecord] = {
        "arrays": arrays_to_record(result.delta),
        "metrics": metrics,
        **extras_to_records(result.extras),
    }
    return _reply(msg, site, records)


def _evaluate(where: _Site, msg: Message, context: Context) -> Message:
    site = where.runtime(context)
    req = _request(msg, site)
    if req.spec.he is not None:
        return he_evaluate(msg, context, site, req)
    scores = site.evaluate(
        req,
        server_round=as_int(msg.content.config_records["config"]["server-round"]),
        arrays=arrays_from_record(msg.content.array_records["arrays"]),
    )
    return _reply(msg, site, {"metrics": metrics_record(scores)})


def make_client_app(
    app_dir: Path | None = None,
    sites: Sequence[Path] = (),
    state_dir: Path | None = None,
    simulation: SimulatedSite | None = None,
) -> ClientApp:
    """Build the site node's ClientApp.

    ``sites`` (simulation) maps partition ids to site files; ``state_dir`` (simulation: the run
    directory's ``sites/``) holds each site's state folder unless its site file names paths. A real
    node takes ``--node-config "site-file='...' state-dir='...'"``. ``simulation`` (the simulation
    engine only, ``fedcore.harness.attacks``): what a simulated attack changes at its sites.
    """
    app = ClientApp()
    where = _Site(app_dir, sites, state_dir, simulation)
    app.query()(_Answering(where, _query))
    app.train()(_Answering(where, _train))
    app.evaluate()(_Answering(where, _evaluate))
    return app

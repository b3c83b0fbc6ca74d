"""The coordinator's protocol with its sites, shared by training (``server_app``) and statistics
(``statistics``): wait for nodes, describe them (site name, schema), ask them to admit a request,
tell them to cancel. Every answer is the site's: a refusal comes back with its reason; a site whose
operator approves each job is asked again until it decides or the job's ``admission_wait`` ends.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedcore.errors import ConfigError, SchemaError
from fedcore.he import PublicContext
from fedcore.he.params import check_max_sites

if TYPE_CHECKING:
    from fedcore.flower.strategy import RoundLog, Tamper

__all__ = [
    "ADMISSION_POLL",
    "ServerSettings",
    "admit",
    "cancel",
    "check_he_sites",
    "check_schemas",
    "describe_sites",
    "query",
    "wait_for_nodes",
]

log = logging.getLogger("fedcore")

ADMISSION_POLL = 10.0
"""Seconds between two admission requests to a site whose operator has not decided yet."""


@dataclass
class ServerSettings:
    """What the coordinator needs besides the Flower context (given directly in simulation)."""

    job_file: Path
    overrides: Sequence[str] = ()
    out_dir: Path | None = None
    expected_sites: int = 1
    timeout: float = 600.0
    on_round: Callable[[RoundLog], None] | None = None
    he_public_key: Path | None = None
    write_summary: bool = True  # a simulation's runner writes its own (with the harness's references)
    resume: Path | None = None  # a run directory (or checkpoint file) whose job continues
    tamper: Tamper | None = None  # simulation only: the job's [attack] on the round's updates

    @classmethod
    def from_run_config(cls, app_dir: Path, run_config: dict[str, Any]) -> ServerSettings:
        """``flwr run`` path: read ``[tool.flwr.app.config]`` (job, set, out-dir, sites)."""
        sets = [s for s in str(run_config.get("set", "")).split(";") if s.strip()]
        for key in ("rounds", "seed"):
            if key in run_config:
                sets.append(f"job.{key}={run_config[key]}")
        sites = [s for s in str(run_config.get("sites", "")).split(",") if s.strip()]
        out = run_config.get("out-dir")
        resume = str(run_config.get("resume", "")).strip()
        return cls(
            job_file=app_dir / str(run_config.get("job", "jobs/default.toml")),
            overrides=sets,
            out_dir=Path(str(out)) if out else Path(resume) if resume else None,  # resumed: same folder
            expected_sites=int(run_config.get("min-sites", len(sites) or 1)),
            resume=Path(resume) if resume else None,
        )


def wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise ConfigError(
                f"only {len(nodes)} of {n} site nodes connected within {timeout:.0f} s; "
                "start the missing nodes or lower min-sites"
            )
        time.sleep(0.5)
    return nodes


def query(grid: Grid, nodes: Sequence[int], config: dict[str, Any], timeout: float) -> list[Message]:
    msgs = [
        Message(RecordDict({"config": ConfigRecord(config)}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in nodes
    ]
    return list(grid.send_and_receive(msgs, timeout=timeout))


def describe_sites(grid: Grid, nodes: list[int], timeout: float) -> list[dict[str, Any]]:
    infos = []
    for reply in query(grid, nodes, {"action": "describe"}, timeout):
        if reply.has_error():
            raise ConfigError(f"a site could not load its data: {reply.error.reason}")
        infos.append({**dict(reply.content.config_records["describe"]), "node": reply.metadata.src_node_id})
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


def admit(
    grid: Grid,
    config: dict[str, Any],
    names: dict[int, str],
    timeout: float,
    *,
    job_id: str,
    wait: float = 0.0,
    poll: float = ADMISSION_POLL,
) -> dict[str, dict[str, Any]]:
    """Ask every site to admit a request (``config``: the admit action and the request on the wire);
    per site: accepted, its plan (releases, epsilon) or its reason.

    A site whose operator approves each job by hand answers ``pending``: those sites are asked again
    every ``poll`` seconds until ``wait`` seconds (the job's ``admission_wait``) have passed. A site
    still pending then counts as refusing and is told to cancel (its request expires); it reserved
    nothing, so it is charged nothing."""
    out = _ask_admission(grid, config, names, timeout)
    deadline = time.monotonic() + wait
    waiting = _pending(out, names)
    if waiting and wait > 0:
        log.warning(
            "waiting up to %.0f s for the operators of %s to approve", wait, ", ".join(waiting.values())
        )
    while waiting and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(poll, left))
        out |= _ask_admission(grid, config, waiting, timeout)
        waiting = _pending(out, names)
    if waiting:
        cancel(grid, job_id, list(waiting), timeout)
        for node, name in waiting.items():
            why = f"no decision from the site's operator within {wait:g} s ([job] admission_wait)"
            out[name] = {"accepted": False, "reason": f"{why}: {out[name]['reason']}", "node": node}
    return out


def _pending(admission: dict[str, dict[str, Any]], names: dict[int, str]) -> dict[int, str]:
    return {node: name for node, name in names.items() if admission[name].get("pending")}


def _ask_admission(
    grid: Grid, config: dict[str, Any], names: dict[int, str], timeout: float
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for reply in query(grid, list(names), {"action": "admit", **config}, timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            out[names[node]] = {"accepted": False, "reason": reply.error.reason, "node": node}
            continue
        rec = reply.content.config_records["admission"]
        entry: dict[str, Any] = {"accepted": bool(rec["accepted"]), "node": node}
        entry |= (
            {"plan": json.loads(str(rec["plan"]))} if entry["accepted"] else {"reason": str(rec["reason"])}
        )
        if not entry["accepted"] and bool(rec.get("pending", False)):
            entry["pending"] = True
        out[names[node]] = entry
    for node, name in names.items():
        out.setdefault(
            name, {"accepted": False, "reason": "no answer to the admission request", "node": node}
        )
    return out


def cancel(grid: Grid, job_id: str, nodes: Sequence[int], timeout: float) -> None:
    """Tell the sites the job stopped: a reservation that released nothing is dropped."""
    try:
        query(grid, nodes, {"action": "cancel", "job-id": job_id}, timeout)
    except Exception as err:  # best effort: reservations also expire on their own
        log.warning("could not tell every site to cancel %s: %s", job_id, err)


def check_he_sites(he_public: PublicContext | None, num_sites: int) -> None:
    """Refuse, before any site is asked to train, a federation larger than the key set's
    ``max_sites``: its encrypted sum could wrap or exceed the noise bound (``ConfigError``)."""
    if he_public is not None:
        check_max_sites(he_public.params, num_sites, keyset_id=he_public.keyset_id, who="the coordinator")

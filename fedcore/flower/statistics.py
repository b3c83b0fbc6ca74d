"""The coordinator's side of a statistics batch, as Flower QUERY messages (simulation and deployment).

Like a training job: the sites describe their schemas, every site is asked to admit the batch (it
plans and reserves the cost under its own policy, or refuses with its reason), and when at least
``min_sites`` accept they are asked for their answers (``action = "answer"``): noisy values with
their noise scales, or under HE one ciphertext per statistic, which the coordinator adds without
reading and sends to one site to decrypt (``action = "decrypt"``; a site decrypts each sum once).
The combined values, with 95% intervals, go to ``statistics.json``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedcore.analytics.combine import combine
from fedcore.analytics.query import QueryJob, QueryRequest
from fedcore.analytics.vectors import dump
from fedcore.errors import AggregationError, ConfigError, PolicyError
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
from fedcore.flower.serde import opaque_from_record, opaque_to_record
from fedcore.he import EncryptedUpdate, PublicContext, load_public_context, sum_encrypted
from fedcore.he.site import sum_digest
from fedcore.site.sums import SumClaim, claim_for, tags_to_wire

__all__ = ["run_statistics"]

log = logging.getLogger("fedcore.statistics")


def _send(
    grid: Grid, node: int, records: Mapping[str, ArrayRecord | ConfigRecord], timeout: float
) -> Message:
    msg = Message(RecordDict(dict(records)), dst_node_id=node, message_type=MessageType.QUERY)
    replies = list(grid.send_and_receive([msg], timeout=timeout))
    if not replies:
        raise AggregationError(f"node {node} did not answer within {timeout:.0f} s")
    return replies[0]


def _answers(
    grid: Grid, request: QueryRequest, nodes: list[int], names: dict[int, str], timeout: float
) -> tuple[dict[str, list[Any]], dict[str, list[bytes]], dict[str, str], dict[str, Any]]:
    answers: dict[str, list[Any]] = {}
    budgets: dict[str, Any] = {}
    sealed: dict[str, list[bytes]] = {}
    failed: dict[str, str] = {}
    for reply in query(grid, nodes, {"action": "answer", "statistics": request.to_wire()}, timeout):
        name = names[reply.metadata.src_node_id]
        if reply.has_error():
            failed[name] = str(reply.error.reason)
            continue
        record = reply.content.config_records["statistics"]
        answers[name] = json.loads(str(record["answers"]))
        budgets[name] = json.loads(str(record["budget"]))
        if request.job.he:
            arrays = reply.content.array_records["sealed"]
            sealed[name] = [opaque_from_record(arrays, f"q{i}") for i in range(len(request.job.queries))]
    for node in nodes:
        if names[node] not in answers:
            failed.setdefault(names[node], "no answer")
    return answers, sealed, failed, budgets


def _confirmed(
    grid: Grid, request: QueryRequest, claim: SumClaim, nodes: Mapping[str, int], timeout: float
) -> dict[str, str]:
    """Ask every contributor to confirm the batch's one set of sums (``fedcore.site.sums``); each
    site's tag, or ``PolicyError`` naming who did not confirm (then no sum is opened)."""
    config = {"action": "confirm", "statistics": request.to_wire(), "claim": claim.to_wire()}
    tags, reasons = {}, {}
    for reply in query(grid, [nodes[s] for s in claim.contributors], config, timeout):
        name = next(s for s, n in nodes.items() if n == reply.metadata.src_node_id)
        if reply.has_error():
            reasons[name] = str(reply.error.reason)
        else:
            tags[name] = str(reply.content.config_records["confirm"]["tag"])
    missing = [s for s in claim.contributors if s not in tags]
    if missing:
        why = "; ".join(f"{s}: {reasons.get(s, 'no answer')}" for s in missing)
        raise PolicyError(
            f"statistics {request.job_id}: not every site that answered confirmed the sums, so none is "
            f"decrypted ({why})"
        )
    return tags


def _decrypt(
    grid: Grid,
    request: QueryRequest,
    index: int,
    total: bytes,
    confirmed: tuple[SumClaim, Mapping[str, str]],
    deciders: Sequence[tuple[int, str]],
    timeout: float,
) -> tuple[dict[str, Any], str]:
    """Ask the answering sites in turn to decrypt the sum of statistic ``index``, until one does."""
    reasons = []
    claim, tags = confirmed
    config = ConfigRecord(
        {
            "action": "decrypt",
            "statistics": request.to_wire(),
            "index": index,
            "claim": claim.to_wire(),
            "tags": tags_to_wire(tags),
        }
    )
    for node, name in deciders:
        reply = _send(grid, node, {"config": config, "sum": opaque_to_record(total)}, timeout)
        if not reply.has_error():
            return json.loads(str(reply.content.config_records["decrypted"]["totals"])), name
        reasons.append(f"{name}: {reply.error.reason}")
    raise PolicyError(
        f"no site decrypted the sum of {request.job.queries[index].name!r}: {'; '.join(reasons)}"
    )


def _public_key(settings: ServerSettings, job: QueryJob) -> PublicContext:
    path = settings.he_public_key
    if path is None and job.public_key is not None:
        path = (settings.job_file.parent / job.public_key).resolve()
    if path is None:
        raise ConfigError(
            f"{settings.job_file}: statistics under HE need the federation's public key at the coordinator: "
            '`fedcore keys init --out KEYS`, then [job] public_key = "KEYS/public.ctx"'
        )
    return load_public_context(path)


def run_statistics(grid: Grid, settings: ServerSettings, job: QueryJob) -> dict[str, Any]:
    """Ask the sites ``grid`` reaches for ``job``'s statistics; combine and write ``statistics.json``."""
    public = _public_key(settings, job) if job.he else None
    check_he_sites(public, settings.expected_sites)
    nodes = wait_for_nodes(grid, settings.expected_sites, settings.timeout)
    check_he_sites(public, len(nodes))
    infos = describe_sites(grid, nodes, settings.timeout)
    check_schemas(infos)
    names = {int(i["node"]): str(i["site"]) for i in infos}
    request = QueryRequest(f"{job.name}-{uuid.uuid4().hex[:12]}", len(nodes), job)
    admission = admit(
        grid, {"statistics": request.to_wire()}, names, settings.timeout, job_id=request.job_id,
        wait=job.admission_wait,
    )  # fmt: skip
    accepted = sorted(n for n, name in names.items() if admission[name]["accepted"])
    body: dict[str, Any] = {"job": job.table, "job_id": request.job_id, "he": job.he, "admission": admission}
    if len(accepted) < job.min_sites:
        cancel(grid, request.job_id, accepted, settings.timeout)
        reasons = "\n  ".join(
            f"{s}: {a['reason']}" for s, a in sorted(admission.items()) if not a["accepted"]
        )
        _write(settings, {**body, "failed": "refused"})
        raise PolicyError(
            f"statistics {request.job_id} refused, nothing was released: {len(accepted)} of {len(nodes)} "
            f"sites accepted, min_sites is {job.min_sites}; no site was charged:\n  {reasons}"
        )
    answers, sealed, failed, body["budget_after"] = _answers(grid, request, accepted, names, settings.timeout)
    body["failed"] = failed
    if len(answers) < job.min_sites:
        _write(settings, body)
        reasons = "\n  ".join(f"{s}: {r}" for s, r in sorted(failed.items()))
        raise PolicyError(
            f"statistics {request.job_id}: {len(answers)} sites answered, min_sites is {job.min_sites}; "
            f"nothing was combined:\n  {reasons}"
        )
    results, decrypted_by = [], {}
    contributors = sorted(sealed)
    totals_he = (
        [
            sum_encrypted(public, [EncryptedUpdate.from_bytes(sealed[s][i]) for s in contributors]).to_bytes()
            for i in range(len(job.queries))
        ]
        if public is not None
        else []
    )
    if public is not None:
        claim = claim_for(request.job_id, "query", 1, contributors, [sum_digest(t) for t in totals_he])
        by_site = {names[n]: n for n in accepted}
        confirmed = (claim, _confirmed(grid, request, claim, by_site, settings.timeout))
    for i, q in enumerate(job.queries):
        per_site = {s: a[i] for s, a in answers.items()}
        if public is None:
            results.append(combine(q, per_site))
            continue
        deciders = [(n, names[n]) for n in accepted if names[n] in answers]
        totals, decrypted_by[q.name] = _decrypt(
            grid, request, i, totals_he[i], confirmed, deciders, settings.timeout
        )
        results.append(combine(q, per_site, decrypted=totals))
    body.update(results=results, decrypted_by=decrypted_by)
    _write(settings, body)
    return body


def _write(settings: ServerSettings, body: Mapping[str, Any]) -> None:
    if settings.out_dir is not None:
        settings.out_dir.mkdir(parents=True, exist_ok=True)
        (Path(settings.out_dir) / "statistics.json").write_text(dump(body))

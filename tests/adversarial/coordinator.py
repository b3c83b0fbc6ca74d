"""A coordinator that sends whatever it likes to one site's real ClientApp handlers.

The site is a real one: a site file, its data, its ledger and audit log on disk, fedcore's ClientApp
(the handlers a SuperNode runs). Only the coordinator is crafted, as an attacker would craft it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedcore.aggregators import Arrays
from fedcore.analytics.query import QueryRequest, parse_queries
from fedcore.clients.runtime import SiteRuntime
from fedcore.config import JobRequest, load_job, load_site
from fedcore.errors import PolicyError
from fedcore.flower.client_app import make_client_app
from fedcore.flower.serde import arrays_from_record, arrays_to_record, opaque_from_record, opaque_to_record
from fedcore.he.site import sum_digest
from fedcore.models import build_model, get_arrays
from fedcore.site.guard import init_site_state
from fedcore.site.sums import SumClaim, claim_for, tags_to_wire

REPO = Path(__file__).resolve().parents[2]
MEDICAL = REPO / "examples" / "medical"
SHARED = REPO.parent / "shared"

DEFAULT_POLICY = """
[privacy]
budget_epsilon = 20.0
budget_delta = 1e-5
"""


def make_site(
    tmp_path: Path, privacy: str = DEFAULT_POLICY, *, name: str = "cleveland", schema: str = ""
) -> Path:
    """A copy of a medical site file with an absolute data path and the given ``[privacy]`` table."""
    text = (MEDICAL / "sites" / f"{name}.toml").read_text().replace("../../../../shared", str(SHARED))
    head = text.split("[privacy]")[0].split("[secagg]")[0]  # the caller's policy: [privacy], [secagg]
    for old, new in (line.split(" => ") for line in schema.splitlines() if line.strip()):
        head = head.replace(old, new)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.toml"
    path.write_text(head + privacy)
    return path


def job(name: str = "dp", *sets: str, job_id: str = "job-1", num_sites: int = 4) -> JobRequest:
    """A request for one of the medical jobs, small (3 rounds x 5 steps) unless ``sets`` say otherwise."""
    spec = load_job(MEDICAL / "jobs" / f"{name}.toml", ["job.rounds=3", "train.local_steps=5", *sets])
    return JobRequest(job_id, num_sites, spec)


def crafted(table: dict[str, Any], *, job_id: str = "job-x", num_sites: int = 4) -> str:
    """A wire request with any table the attacker likes (no local validation)."""
    return json.dumps({"job_id": job_id, "num_sites": num_sites, "job": table})


class Refused(PolicyError):
    """What a coordinator sees of a site's refusal: the error reply's one line."""


class Coordinator:
    """Drives one site's real ClientApp with crafted messages."""

    def __init__(self, site_file: Path, state_dir: Path, *, init: bool = True) -> None:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
        if init:
            init_site_state(load_site(site_file), state_dir)
        self.site_file, self.state_dir = site_file, state_dir
        self.app = make_client_app()
        self.context = Context(
            run_id=1,
            node_id=7,
            node_config={"site-file": str(site_file), "state-dir": str(state_dir)},
            state=RecordDict(),
            run_config={},
        )

    @property
    def site(self) -> SiteRuntime:
        return SiteRuntime.load(self.site_file, self.state_dir)

    def send(
        self, kind: str, config: dict[str, Any], arrays: ArrayRecord | None = None, *, key: str = "arrays"
    ) -> Message:
        """The site's reply; an error reply (a refusal) raises ``Refused`` with the site's one line."""
        content = RecordDict({"config": ConfigRecord(config)})
        if arrays is not None:
            content[key] = arrays
        msg = Message(content, dst_node_id=7, message_type=kind)
        reply = self.app(msg, self.context)
        if reply.has_error():
            raise Refused(str(reply.error.reason))
        return reply

    def send_records(self, kind: str, config: dict[str, Any], records: Mapping[str, ArrayRecord]) -> Message:
        """``send`` with several array records (a secure-aggregation train message)."""
        content = RecordDict({"config": ConfigRecord(config), **records})
        reply = self.app(Message(content, dst_node_id=7, message_type=kind), self.context)
        if reply.has_error():
            raise Refused(str(reply.error.reason))
        return reply

    def admit(self, request: JobRequest | str) -> dict[str, Any]:
        wire = request if isinstance(request, str) else request.to_wire()
        reply = self.send(MessageType.QUERY, {"action": "admit", "job": wire})
        rec = reply.content.config_records["admission"]
        out = {"accepted": bool(rec["accepted"])}
        out |= {"plan": json.loads(str(rec["plan"]))} if out["accepted"] else {"reason": str(rec["reason"])}
        return out

    def cancel(self, job_id: str) -> str:
        reply = self.send(MessageType.QUERY, {"action": "cancel", "job-id": job_id})
        return str(reply.content.config_records["cancel"]["status"])

    def model(self, request: JobRequest, *, seed: int = 0) -> Arrays:
        return get_arrays(build_model(request.spec.model.as_table(), len(self.site.data.features), seed=seed))

    def train(
        self, request: JobRequest | str, server_round: int, arrays: Sequence[np.ndarray]
    ) -> tuple[Arrays, dict[str, float]]:
        wire = request if isinstance(request, str) else request.to_wire()
        config = {"job": wire, "server-round": server_round, "he-round": server_round - 1}
        reply = self.send(MessageType.TRAIN, config, arrays_to_record(tuple(arrays)))
        metrics = {k: float(v) for k, v in reply.content.metric_records["metrics"].items()}  # type: ignore[arg-type]
        return arrays_from_record(reply.content.array_records["arrays"]), metrics

    def evaluate(
        self, request: JobRequest | str, server_round: int, arrays: Sequence[np.ndarray]
    ) -> dict[str, float]:
        wire = request if isinstance(request, str) else request.to_wire()
        config = {"job": wire, "server-round": server_round, "he-round": server_round}
        reply = self.send(MessageType.EVALUATE, config, arrays_to_record(tuple(arrays)))
        return {k: float(v) for k, v in reply.content.metric_records["metrics"].items()}  # type: ignore[arg-type]

    # --- statistics ---------------------------------------------------------------------------

    def admit_statistics(self, request: QueryRequest | str) -> dict[str, Any]:
        wire = request if isinstance(request, str) else request.to_wire()
        reply = self.send(MessageType.QUERY, {"action": "admit", "statistics": wire})
        rec = reply.content.config_records["admission"]
        out = {"accepted": bool(rec["accepted"])}
        out |= {"plan": json.loads(str(rec["plan"]))} if out["accepted"] else {"reason": str(rec["reason"])}
        return out

    def answer(self, request: QueryRequest | str) -> tuple[list[Any], list[bytes]]:
        """The site's answers, and under HE its ciphertexts (one per statistic)."""
        wire = request if isinstance(request, str) else request.to_wire()
        reply = self.send(MessageType.QUERY, {"action": "answer", "statistics": wire})
        answers = json.loads(str(reply.content.config_records["statistics"]["answers"]))
        sealed = reply.content.array_records.get("sealed")
        n = len(answers)
        return answers, [] if sealed is None else [opaque_from_record(sealed, f"q{i}") for i in range(n)]

    def confirm(self, request: JobRequest | QueryRequest | str, claim: SumClaim) -> str:
        """The site's confirmation (its tag) of ``claim``: under HE, its one sum of a round."""
        if isinstance(request, QueryRequest):
            config = {"action": "confirm", "statistics": request.to_wire(), "claim": claim.to_wire()}
        else:
            wire = request if isinstance(request, str) else request.to_wire()
            config = {"action": "confirm", "job": wire, "claim": claim.to_wire()}
        return str(self.send(MessageType.QUERY, config).content.config_records["confirm"]["tag"])

    def decrypt(
        self,
        request: QueryRequest | str,
        index: int,
        total: bytes,
        claim: SumClaim,
        tags: Mapping[str, str],
    ) -> dict[str, Any]:
        wire = request if isinstance(request, str) else request.to_wire()
        config = {
            "action": "decrypt",
            "statistics": wire,
            "index": index,
            "claim": claim.to_wire(),
            "tags": tags_to_wire(tags),
        }
        reply = self.send(MessageType.QUERY, config, opaque_to_record(total), key="sum")
        result: dict[str, Any] = json.loads(str(reply.content.config_records["decrypted"]["totals"]))
        return result


def he_claim(claim: SumClaim, tags: Mapping[str, str]) -> dict[str, str]:
    """The config entries a message carrying an HE training sum sends with it."""
    return {"he-claim": claim.to_wire(), "he-tags": tags_to_wire(tags)}


def query_claim(request: QueryRequest, contributors: Sequence[str], totals: Sequence[bytes]) -> SumClaim:
    """The claim of a statistics batch's sums (``totals``, one per statistic) over ``contributors``."""
    return claim_for(request.job_id, "query", 1, contributors, [sum_digest(t) for t in totals])


def train_claim(
    request: JobRequest, server_round: int, contributors: Sequence[str], total: bytes
) -> SumClaim:
    """The claim of round ``server_round``'s training sum over ``contributors``."""
    return claim_for(request.job_id, "train", server_round, contributors, [sum_digest(total)])


def statistics(
    *queries: dict[str, Any], job_id: str = "stats-1", num_sites: int = 4, **job: Any
) -> QueryRequest:
    """A statistics request (``[job]`` keys as keyword arguments; min_sites defaults to 2)."""
    return QueryRequest(job_id, num_sites, parse_queries({"job": job, "query": list(queries)}, "test"))

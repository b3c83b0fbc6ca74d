"""Manual approval at a real site, through fedcore's ClientApp: a job waits for its operator (the
coordinator hears "pending"), runs only after `fedcore approve`, and a denied, withdrawn or timed-out
job reserves and charges nothing. The coordinator here is crafted; the site, its ledger and audit log
are real."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from flwr.app import MessageType

from fedcore.analytics.query import QueryRequest
from fedcore.cli import main
from fedcore.clients.runtime import SiteRuntime
from fedcore.config import JobRequest
from tests.adversarial.coordinator import DEFAULT_POLICY, Coordinator, Refused, job, make_site, statistics

MANUAL = DEFAULT_POLICY + '\n[node]\napproval = "manual"\n'


def _site(tmp_path: Path, node: str = MANUAL) -> tuple[Coordinator, list[str]]:
    site_file = make_site(tmp_path, node)
    c = Coordinator(site_file, tmp_path / "state")
    return c, [str(site_file), "--state-dir", str(tmp_path / "state")]


def _admit(c: Coordinator, request: JobRequest | QueryRequest) -> dict[str, Any]:
    """The admission answer as the coordinator reads it, ``pending`` included."""
    key = "statistics" if isinstance(request, QueryRequest) else "job"
    reply = c.send(MessageType.QUERY, {"action": "admit", key: request.to_wire()})
    return dict(reply.content.config_records["admission"])


def _ledger(c: Coordinator) -> dict[str, Any]:
    """What the site's ledger holds that a job could have changed."""
    ledger = c.site.guard.ledger
    return {"charges": ledger.summary().charges, "plans": c.site.guard.plans.job_ids()}


def _audit(c: Coordinator, job_id: str) -> list[tuple[str, str]]:
    return [(r.kind, r.actor) for r in c.site.guard.audit.records() if r.job_id == job_id]


def test_a_job_waits_for_its_operator_and_runs_once_approved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c, where = _site(tmp_path)
    request = job("dp", "job.rounds=1", "train.local_steps=2", job_id="wait-1")
    before = _ledger(c)
    for _ in range(3):  # asked again while it waits: still pending, nothing reserved, one request audited
        answer = _admit(c, request)
        assert (answer["accepted"], answer["pending"]) == (False, True)
        assert "only once its operator approves it" in str(answer["reason"])
    assert _ledger(c) == before and _audit(c, "wait-1") == [("request", "coordinator")]
    with pytest.raises(Refused, match="was not admitted"):
        c.train(request, 1, c.model(request))
    capsys.readouterr()
    assert main(["requests", *where]) == 0
    assert "wait-1  pending" in capsys.readouterr().out
    assert main(["approve", *where, "wait-1", "--as", "Dr Ana Lima"]) == 0
    assert "approved by Dr Ana Lima" in capsys.readouterr().out
    assert _admit(c, request)["accepted"] is True  # now the normal admission: reserved
    c.train(request, 1, c.model(request))
    charged = c.site.guard.ledger.job_charge("wait-1")
    assert charged is not None and charged[0] > 0
    assert _audit(c, "wait-1") == [
        ("request", "coordinator"), ("refuse", "coordinator"), ("approve", "Dr Ana Lima"),
        ("admit", "coordinator"), ("release", "coordinator"),
    ]  # fmt: skip
    assert main(["deny", *where, "wait-1"]) == 2  # a decision is made once
    assert "a decision is made once" in capsys.readouterr().err


def test_denied_withdrawn_and_timed_out_jobs_charge_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c, where = _site(tmp_path)
    denied, withdrawn = job("dp", job_id="deny-1"), job("dp", job_id="gone-1")
    batch = statistics({"name": "n", "stat": "count", "epsilon": 0.5}, job_id="stats-1")
    for request in (denied, withdrawn, batch):
        assert _admit(c, request)["pending"] is True
    before = _ledger(c)
    assert main(["deny", *where, "deny-1", "--reason", "not in our protocol", "--as", "dpo"]) == 0
    assert main(["deny", *where, "stats-1", "--as", "dpo"]) == 0
    answer = _admit(c, denied)
    assert answer["accepted"] is False and "pending" not in answer
    assert "denied by its operator dpo at" in str(answer["reason"]) and "not in our protocol" in str(
        answer["reason"]
    )
    assert _admit(c, batch)["accepted"] is False
    assert c.cancel("gone-1") == "expired"  # the coordinator stopped waiting
    assert "the coordinator stopped waiting" in str(_admit(c, withdrawn)["reason"])
    capsys.readouterr()
    assert main(["approve", *where, "gone-1"]) == 2
    assert "was expired by coordinator" in capsys.readouterr().err
    assert _ledger(c) == before  # nothing reserved, nothing charged
    assert [k for k, _ in _audit(c, "deny-1")] == ["request", "deny", "refuse"]
    assert [k for k, _ in _audit(c, "gone-1")] == ["request", "expire", "refuse"]


def test_the_sites_deadline_and_a_changed_job_under_a_known_id(tmp_path: Path) -> None:
    c, where = _site(tmp_path, MANUAL + "approval_timeout_hours = 0.0003\n")  # about one second
    request = job("dp", job_id="slow-1")
    assert _admit(c, request)["pending"] is True
    changed = _admit(c, job("dp", "job.rounds=4", job_id="slow-1"))
    assert changed["accepted"] is False and "requested with other settings" in str(changed["reason"])
    time.sleep(1.3)
    late = _admit(c, request)
    assert late["accepted"] is False and "timed out (no decision before the site's deadline)" in str(
        late["reason"]
    )
    assert ("expire", "site") in _audit(c, "slow-1")
    assert main(["approve", *where, "slow-1"]) == 2


def test_a_denial_stands_when_the_site_returns_to_automatic_admission(tmp_path: Path) -> None:
    c, where = _site(tmp_path)
    assert _admit(c, job("dp", job_id="no-1"))["pending"] is True
    assert main(["deny", *where, "no-1"]) == 0
    site_file = Path(where[0])
    site_file.write_text(site_file.read_text().replace('approval = "manual"', 'approval = "auto"'))
    SiteRuntime._cache.clear()  # the node restarts with the new site file
    assert _admit(c, job("dp", job_id="new-1"))["accepted"] is True  # automatic again
    assert "denied by its operator" in str(_admit(c, job("dp", job_id="no-1"))["reason"])
    assert json.loads(json.dumps(_audit(c, "new-1"))) == [["admit", "coordinator"]]

"""Decisions in the console (``POST /decide``): reads stay open on loopback, a decision needs the
token even there, the console's own Origin and the form's CSRF field; the decision is the one
`fedcore approve`/`deny` takes, audited with the operator's name, and the pages and the data-use
statement show who decided."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.app import MessageType

from fedcore.config import load_site
from fedcore.console import SiteReader, create_app
from fedcore.console.security import csrf_field
from fedcore.site.approvals import ApprovalBook
from fedcore.site.ledger import PrivacyLedger
from tests.adversarial.coordinator import DEFAULT_POLICY, Coordinator, job, make_site
from tests.console.served_site import client

TOKEN = "decide-token-0123456789abcdef"
ORIGIN = {"origin": "http://127.0.0.1"}


@pytest.fixture(scope="module")
def manual(tmp_path_factory: pytest.TempPathFactory) -> SiteReader:
    """A manual-approval site with three jobs waiting for its operator (each test decides its own)."""
    tmp_path = tmp_path_factory.mktemp("manual-site")
    site_file = make_site(tmp_path, DEFAULT_POLICY + '\n[node]\napproval = "manual"\n')
    c = Coordinator(site_file, tmp_path / "state")
    for job_id in ("a-1", "b-1", "c-1"):
        reply = c.send(MessageType.QUERY, {"action": "admit", "job": job("dp", job_id=job_id).to_wire()})
        assert reply.content.config_records["admission"]["pending"] is True
    return SiteReader(load_site(site_file), tmp_path / "state")


def _book(reader: SiteReader) -> ApprovalBook:
    return ApprovalBook(PrivacyLedger(reader.paths.ledger, site=reader.site.name, read_only=True))


def _form(reader: SiteReader, job_id: str, decision: str, /, **extra: str) -> dict[str, str]:
    rec = _book(reader).get(job_id)
    assert rec is not None
    fields = {"csrf": csrf_field(TOKEN), "job_id": job_id, "digest": rec.digest, "decision": decision}
    return fields | {"operator": "Dr Ana Lima", "reason": ""} | extra


def _status(reader: SiteReader, job_id: str) -> Any:
    rec = _book(reader).get(job_id)
    return None if rec is None else (rec.status, rec.decided_by, rec.reason)


def test_on_loopback_anyone_reads_only_the_tokens_holder_decides(manual: SiteReader) -> None:
    c = client(create_app(manual, decision_token=TOKEN))
    page = c.get("/jobs")
    assert page.status_code == 200 and 'class="request" data-job="a-1"' in page.text
    assert "<form" not in page.text and "open the <code>?token=</code> address" in page.text
    assert c.post("/decide", data=_form(manual, "a-1", "approve"), headers=ORIGIN).status_code == 401
    first = c.get(f"/jobs?token={TOKEN}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/jobs"
    page = c.get("/jobs")  # the cookie now carries the token: the forms, with their CSRF field
    assert '<form method="post" action="/decide" class="decide" data-job="a-1">' in page.text
    assert csrf_field(TOKEN) in page.text and TOKEN not in page.text
    for headers in ({}, {"origin": "http://evil.example"}, {"origin": "null"}):  # cookie, foreign page
        answer = c.post("/decide", data=_form(manual, "a-1", "approve"), headers=headers)
        assert answer.status_code == 403 and "own pages" in answer.text
    wrong = c.post("/decide", data=_form(manual, "a-1", "approve", csrf="0" * 64), headers=ORIGIN)
    assert wrong.status_code == 400 and "CSRF field is missing or wrong" in wrong.text
    assert _status(manual, "a-1") == ("pending", "", "")  # nothing decided by any of these
    done = c.post("/decide", data=_form(manual, "a-1", "approve"), headers=ORIGIN, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/job?id=a-1"
    assert _status(manual, "a-1") == ("approved", "Dr Ana Lima", "")
    record = manual.audit().records()[-1]
    assert (record.kind, record.actor, record.job_id, record.released) == (
        "approve",
        "Dr Ana Lima",
        "a-1",
        "approved (console)",
    )
    shown = c.get("/job?id=a-1").text
    assert 'data-status="approved"' in shown and "Dr Ana Lima" in shown and "<form" not in shown
    statement = c.get("/statement?id=a-1&format=md").text
    assert "| Approval | approved by Dr Ana Lima at " in statement


def test_a_decision_form_is_checked_whole(manual: SiteReader) -> None:
    c = client(create_app(manual, decision_token=TOKEN))
    auth = {"authorization": f"Bearer {TOKEN}"}  # a tool such as curl: no Origin, the CSRF field still
    for extra, status, text in (
        ({"operator": "  "}, 400, "give your name"),
        ({"operator": "x\ny"}, 400, "printable characters on one line"),
        ({"decision": "maybe"}, 400, "approve or deny"),
        ({"digest": "f" * 64}, 409, "decide on the request as the site stored it"),
        ({"job_id": "nope"}, 404, "no approval request for job"),
        ({"reason": "r" * 501}, 400, "keep it under 500"),
    ):
        fields = _form(manual, "b-1", "deny", **extra)
        answer = c.post("/decide", data=fields, headers=auth)
        assert (answer.status_code, text in answer.text) == (status, True), extra
    assert _status(manual, "b-1") == ("pending", "", "")
    smuggled = c.post("/decide", data={**_form(manual, "b-1", "deny"), "actor": "root"}, headers=auth)
    assert smuggled.status_code == 400 and "unknown or repeated field" in smuggled.text
    json_body = c.post("/decide", json=_form(manual, "b-1", "deny"), headers=auth)
    assert json_body.status_code == 400 and "is a form" in json_body.text
    fields = _form(manual, "b-1", "deny", reason="outside   the consent\tscope", operator="dpo")
    assert c.post("/decide", data=fields, headers=auth, follow_redirects=False).status_code == 303
    assert _status(manual, "b-1") == ("denied", "dpo", "outside the consent scope")
    again = c.post("/decide", data=_form(manual, "b-1", "approve"), headers=auth)
    assert again.status_code == 409 and "a decision is made once" in again.text
    jobs = {j.job_id: j for j in manual.jobs()}
    assert jobs["b-1"].state == "denied"
    assert "denied by dpo" in jobs["b-1"].reason and jobs["b-1"].requested_by == ("coordinator",)
    statement = c.get("/statement?id=b-1&format=html", headers=auth).text
    assert "<th>Approval</th><td>denied by dpo at " in statement and "outside the consent scope" in statement


def test_beyond_loopback_the_one_token_reads_and_decides(manual: SiteReader) -> None:
    c = client(create_app(manual, token=TOKEN, allowed_hosts=None), "192.0.2.10:8765")
    fields = _form(manual, "c-1", "approve")
    assert c.post("/decide", data=fields, headers={"origin": "http://192.0.2.10:8765"}).status_code == 401
    auth = {"authorization": f"Bearer {TOKEN}", "origin": "http://192.0.2.10:8765"}
    assert c.post("/decide", data=fields, headers=auth, follow_redirects=False).status_code == 303
    assert _status(manual, "c-1") == ("approved", "Dr Ana Lima", "")

"""The approvals table (ledger schema v4): states, a decision made once, the deadline, triggers,
and the migration of an older ledger file."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from fedcore.errors import ConfigError, LedgerError, PolicyError
from fedcore.site.approvals import ApprovalBook, ApprovalRecord
from fedcore.site.db import atomic_create
from fedcore.site.ledger import PrivacyLedger
from fedcore.site.ledger_schema import SCHEMA, V4_TABLES

SUMMARY = {"kind": "training", "epsilon": 1.0, "delta": 1e-5, "rounds": 3}


def _book(tmp_path: Path) -> ApprovalBook:
    return ApprovalBook(PrivacyLedger.create(tmp_path / "a" / "ledger.db", site="a"))


def _ask(book: ApprovalBook, job_id: str = "j-1", *, wait: float = 3600.0) -> ApprovalRecord:
    rec, created = book.request(
        job_id, digest="d" * 64, dataset="heart", summary=SUMMARY, text="3 rounds", wait_seconds=wait
    )
    assert created
    return rec


def test_a_request_is_decided_once_and_never_changes(tmp_path: Path) -> None:
    book = _book(tmp_path)
    asked = _ask(book)
    assert (asked.status, asked.summary, asked.decided_by) == ("pending", SUMMARY, "")
    again, created = book.request("j-1", digest="e" * 64, dataset="x", summary={}, text="", wait_seconds=1)
    assert not created and again == asked  # idempotent: the stored request, whatever was asked now
    assert [r.job_id for r in book.pending()] == ["j-1"]
    with pytest.raises(PolicyError, match="digest dddddddddddd, not eeeeeeeeeeee"):
        book.decide("j-1", "approved", by="ana", digest="e" * 64)
    done = book.decide("j-1", "denied", by="ana", reason="not this study", digest="d" * 64)
    assert (done.status, done.decided_by, done.reason) == ("denied", "ana", "not this study")
    assert book.get("j-1") == done and book.pending() == []
    with pytest.raises(PolicyError, match=r"was denied by ana at .*a decision is made once"):
        book.decide("j-1", "approved", by="bob")
    with pytest.raises(ConfigError, match="no approval request for job 'nope'"):
        book.decide("nope", "approved", by="ana")
    with pytest.raises(PolicyError, match="not pending"):
        book.decide("j-1", "pending", by="ana")


def test_the_file_itself_refuses_edits(tmp_path: Path) -> None:
    book = _book(tmp_path)
    _ask(book, "open")
    _ask(book, "closed")
    book.decide("closed", "approved", by="ana")
    conn = sqlite3.connect(book.ledger.path)
    for sql in (
        "UPDATE approvals SET status = 'denied' WHERE job_id = 'closed'",  # a decision is final
        "UPDATE approvals SET decided_by = 'mallory' WHERE job_id = 'closed'",
        "UPDATE approvals SET digest = 'x' WHERE job_id = 'open'",  # the request is fixed
        "UPDATE approvals SET summary_json = '{}' WHERE job_id = 'open'",
        "DELETE FROM approvals WHERE job_id = 'open'",
        "UPDATE approvals SET status = 'maybe' WHERE job_id = 'open'",  # CHECK
    ):
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(sql)
    conn.execute("UPDATE approvals SET status = 'denied' WHERE job_id = 'open'")  # pending: may leave once
    conn.close()


def test_past_its_deadline_a_request_can_only_expire(tmp_path: Path) -> None:
    book = _book(tmp_path)
    rec = _ask(book, wait=0.2)
    assert not rec.overdue() and rec.overdue(now=rec.deadline)
    time.sleep(0.3)
    assert book.pending() == [] and book.get("j-1") is not None
    with pytest.raises(PolicyError, match=r"timed out at .*can no longer be decided"):
        book.decide("j-1", "approved", by="ana")
    assert book.decide("j-1", "expired", by="site", reason="late").status == "expired"


def test_an_older_ledger_gains_the_table_and_a_reader_asks_for_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "a" / "ledger.db"
    assert atomic_create(path, SCHEMA.replace(V4_TABLES, ""), {"site": "a", "schema_version": "3"})
    with pytest.raises(LedgerError, match=r"older fedcore .* run `fedcore ledger SITE_FILE` once"):
        PrivacyLedger(path, site="a", read_only=True)
    ledger = PrivacyLedger(path, site="a")  # read-write: migrated in place
    book = ApprovalBook(ledger)
    _ask(book)
    assert book.get("j-1") is not None
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("4",)

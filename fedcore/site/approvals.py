"""The operator's approvals in a site's ledger file: a job's request, and a person's decision on it.

Under ``[node] approval = "manual"`` (``fedcore.site.approval_gate``) a job's first admission request
is stored here as *pending*, bound to the digest of the job's settings, with what the site's plan for
it would release (``summary``, ``text``) and a deadline. A pending request holds no budget: the plan
is reserved (and the budget checked) only when the approved job is asked again. Its status leaves
``pending`` once, to ``approved``, ``denied`` or ``expired`` (a trigger refuses any other change, and
any change to the request itself), with when, by whom and why.

Every change writes its audit record inside the same ledger transaction, which anchors the audit
log's new head (as ``PlanBook.release`` does): two operators deciding at once are serialised by the
ledger's write lock, and a decision is never stored without the record of who made it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast

from fedcore.errors import ConfigError, PolicyError
from fedcore.site.ledger import PrivacyLedger
from fedcore.site.records import now_iso

__all__ = ["ApprovalBook", "ApprovalRecord", "ApprovalStatus", "Audit"]

ApprovalStatus = Literal["pending", "approved", "denied", "expired"]
Audit = Callable[["ApprovalRecord"], tuple[int, str]]
"""Writes the audit record of a change (given the record after it) and returns the log's new head."""

_FIELDS = (
    "job_id, digest, dataset, requested, deadline, summary_json, text, status, decided, decided_by, reason"
)


@dataclass(frozen=True)
class ApprovalRecord:
    """One job's request for the operator's approval, and the decision on it (when made)."""

    job_id: str
    digest: str
    dataset: str
    requested: str  # ISO 8601, UTC
    deadline: float  # seconds since the epoch: undecided by then, the request expires
    summary: Mapping[str, Any]
    text: str
    status: ApprovalStatus
    decided: str = ""
    decided_by: str = ""
    reason: str = ""

    @property
    def deadline_iso(self) -> str:
        return datetime.fromtimestamp(self.deadline, UTC).isoformat(timespec="seconds")

    def overdue(self, now: float | None = None) -> bool:
        """Still pending past its deadline (expired in effect, whether or not marked yet)."""
        return self.status == "pending" and self.deadline <= (time.time() if now is None else now)


class ApprovalBook:
    """The approvals table of one site's ledger."""

    def __init__(self, ledger: PrivacyLedger) -> None:
        self.ledger = ledger

    def _get(self, conn: sqlite3.Connection, job_id: str) -> ApprovalRecord | None:
        row = conn.execute(f"SELECT {_FIELDS} FROM approvals WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else self._record(row)

    def _record(self, row: tuple[Any, ...]) -> ApprovalRecord:
        job_id, digest, dataset, requested, deadline, summary_json, text, status, decided, by, reason = row
        try:
            summary = json.loads(summary_json)
        except ValueError as err:
            raise self.ledger._fail(f"the approval request of job {job_id!r} is unreadable", err) from err
        return ApprovalRecord(
            str(job_id), str(digest), str(dataset), str(requested), float(deadline), summary, str(text),
            cast(ApprovalStatus, status), str(decided), str(by), str(reason),
        )  # fmt: skip

    def get(self, job_id: str) -> ApprovalRecord | None:
        """The request of ``job_id`` (``None``: never requested)."""
        with self.ledger._connect() as conn:
            return self._get(conn, job_id)

    def all(self) -> list[ApprovalRecord]:
        """Every request, oldest first."""
        with self.ledger._connect() as conn:
            rows = conn.execute(f"SELECT {_FIELDS} FROM approvals ORDER BY requested, job_id").fetchall()
        return [self._record(row) for row in rows]

    def pending(self, now: float | None = None) -> list[ApprovalRecord]:
        """The requests still waiting for a decision (not past their deadline), oldest first."""
        return [r for r in self.all() if r.status == "pending" and not r.overdue(now)]

    def request(
        self,
        job_id: str,
        *,
        digest: str,
        dataset: str,
        summary: Mapping[str, Any],
        text: str,
        wait_seconds: float,
        audit: Audit | None = None,
    ) -> tuple[ApprovalRecord, bool]:
        """Store a pending request (audited with ``audit``); idempotent: a known job id's request is
        returned as stored (whatever its digest: the caller compares). True when stored now."""
        with self.ledger._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            old = self._get(conn, job_id)
            if old is not None:
                return old, False
            rec = ApprovalRecord(
                job_id, digest, dataset, now_iso(), time.time() + wait_seconds,
                json.loads(json.dumps(summary, sort_keys=True)), text, "pending",
            )  # fmt: skip
            conn.execute(
                f"INSERT INTO approvals ({_FIELDS}) VALUES ({', '.join('?' * 11)})",
                (rec.job_id, rec.digest, rec.dataset, rec.requested, rec.deadline,
                 json.dumps(rec.summary, sort_keys=True), rec.text, "pending", "", "", ""),
            )  # fmt: skip
            if audit is not None:
                self.ledger._anchor(conn, *audit(rec))
            conn.commit()
        return rec, True

    def decide(
        self,
        job_id: str,
        status: ApprovalStatus,
        *,
        by: str,
        reason: str = "",
        digest: str | None = None,
        audit: Audit | None = None,
    ) -> ApprovalRecord:
        """Decide a pending request (``approved``, ``denied``, or ``expired``), audited in the same
        transaction. Refused (``ConfigError`` for an unknown job, ``PolicyError`` otherwise, nothing
        changed) when it was decided before, is past its deadline (except to mark it ``expired``), or
        ``digest`` is given and is not the request's (the decision was made on another request)."""
        if status == "pending":
            raise PolicyError("a decision is approved, denied or expired, not pending")
        with self.ledger._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            rec = self._get(conn, job_id)
            problem = _refusal(rec, job_id, status, digest, site=self.ledger.site)
            if problem is not None:
                raise problem
            assert rec is not None
            after = replace(rec, status=status, decided=now_iso(), decided_by=by, reason=reason)
            conn.execute(
                "UPDATE approvals SET status = ?, decided = ?, decided_by = ?, reason = ? WHERE job_id = ?",
                (after.status, after.decided, after.decided_by, after.reason, job_id),
            )
            if audit is not None:
                self.ledger._anchor(conn, *audit(after))
            conn.commit()
        return after


def _refusal(
    rec: ApprovalRecord | None, job_id: str, status: ApprovalStatus, digest: str | None, *, site: str
) -> Exception | None:
    """Why the decision ``status`` on ``rec`` is refused (``None``: it may be made)."""
    if rec is None:
        return ConfigError(
            f"site {site!r} has no approval request for job {job_id!r}; `fedcore console SITE_FILE` or "
            "the audit log lists the jobs it has seen"
        )
    if rec.status != "pending":
        by = f" by {rec.decided_by}" if rec.decided_by else ""
        return PolicyError(f"job {job_id!r} was {rec.status}{by} at {rec.decided}; a decision is made once")
    if digest is not None and digest != rec.digest:
        return PolicyError(
            f"job {job_id!r} was requested with settings of digest {rec.digest[:12]}, not {digest[:12]}; "
            "decide on the request as the site stored it (reload the page)"
        )
    if status != "expired" and rec.overdue():
        return PolicyError(
            f"the request of job {job_id!r} timed out at {rec.deadline_iso}; it can no longer be decided"
        )
    return None

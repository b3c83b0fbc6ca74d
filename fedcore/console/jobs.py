"""Every job a site has seen, from its ledger's plans, releases and approvals and its audit log.

Pure: ``build_jobs`` takes what the reader read and returns frozen views. A job's state follows from
the ledger (the authority on what was admitted, answered and charged) and, for a job never admitted,
from its approval request (manual approval: pending, approved, denied, expired) or the audit log's
refusal. The coordinator is the adversary: every text it could have chosen
(job ids, refusal reasons that quote its request) is data to escape, never markup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from fedcore.site.approvals import ApprovalRecord
from fedcore.site.audit import AuditRecord
from fedcore.site.plans import PlanRecord

__all__ = [
    "DECISIONS", "JOB_STATES", "JobState", "JobView", "ReleaseView", "approval_state", "build_jobs",
    "job_state",
]  # fmt: skip

DECISIONS = ("approve", "deny", "expire")
"""Audit kinds of decisions on a request for approval (made by the operator, or the site's clock)."""

JobState = Literal[
    "pending", "approved", "admitted", "running", "finished", "cancelled", "expired", "denied", "refused"
]
JOB_STATES: dict[str, str] = {
    "pending": "waiting for the operator's approval (nothing reserved)",
    "approved": "approved by the operator; admitted (budget permitting) when the coordinator asks again",
    "admitted": "admitted: cost reserved, nothing released yet",
    "running": "answering: some planned releases given",
    "finished": "every planned release given, or its reservation lapsed",
    "cancelled": "cancelled by the coordinator (what it released stays charged)",
    "expired": "its reservation, or its request for approval, lapsed with nothing released (charged nothing)",
    "denied": "denied by the operator (charged nothing)",
    "refused": "refused before any work (charged nothing)",
}


@dataclass(frozen=True)
class ReleaseView:
    """One answer the site gave: when, and the charge made with it (``None``: no charge with it)."""

    kind: str
    round: int
    time: str
    epsilon: float | None
    delta: float | None


@dataclass(frozen=True)
class JobView:
    """What the site knows of one job; ``charged_epsilon`` is ``PrivacyLedger.job_charge``."""

    job_id: str
    state: JobState
    reason: str
    kind: str  # "training", "statistics", or "unknown" (refused before a plan)
    requested_by: tuple[str, ...]
    first_seen: str
    dataset: str = ""
    digest: str = ""
    admitted: str = ""
    expires: str = ""
    mechanisms: tuple[str, ...] = ()
    rounds: int | None = None
    limits: Mapping[str, int] | None = None
    planned_epsilon: float | None = None
    delta: float | None = None
    unit: str | None = None
    plan_releases: tuple[Mapping[str, Any], ...] = ()
    releases: tuple[ReleaseView, ...] = ()
    refused_releases: int = 0
    charged_epsilon: float | None = None
    charged_delta: float | None = None
    records: tuple[AuditRecord, ...] = ()
    approval: ApprovalRecord | None = None  # manual approval: the request and the operator's decision

    @property
    def summary_line(self) -> str:
        """What, in a few words: kind, mechanisms, rounds."""
        what = self.kind
        if self.mechanisms:
            what += f" ({', '.join(self.mechanisms)})"
        if self.rounds is not None:
            what += f", {self.rounds} rounds"
        return what


def job_state(
    plan: PlanRecord | None, refusal: str, *, now: float, approval: ApprovalRecord | None = None
) -> tuple[JobState, str]:
    """A job's state and the reason shown with it (``refusal``: its last audited refusal, if any)."""
    if plan is None and approval is not None:
        return approval_state(approval, now=now)
    if plan is None:
        return "refused", refusal or "refused before admission (see its audit records)"
    given = sum(plan.released.values())
    planned = sum(int(n) for n in plan.limits.values())
    if plan.status == "cancelled":
        return "cancelled", f"cancelled after {given} of {planned} planned answers"
    if plan.status == "reserved":
        if plan.expires <= now:
            return "expired", f"reservation lapsed at {_iso(plan.expires)}; nothing released, nothing charged"
        return "admitted", f"cost reserved until {_iso(plan.expires)}"
    if all(plan.released.get(kind, 0) >= int(n) for kind, n in plan.limits.items()):
        return "finished", f"all {planned} planned answers given"
    if plan.expires <= now:
        return "finished", (
            f"reservation lapsed at {_iso(plan.expires)} after {given} of {planned} planned answers; "
            "the rounds never asked were never charged"
        )
    return "running", f"{given} of {planned} planned answers given"


def approval_state(approval: ApprovalRecord, *, now: float) -> tuple[JobState, str]:
    """The state of a job not admitted (yet) under manual approval, and what the decision says."""
    by = f"{approval.decided_by} at {_when(approval.decided)}"
    if approval.overdue(now):
        return "expired", f"no decision before {_when(approval.deadline_iso)}; nothing reserved or charged"
    if approval.status == "pending":
        return (
            "pending",
            f"asked {_when(approval.requested)}; waits for a decision until {_when(approval.deadline_iso)}",
        )
    if approval.status == "approved":
        return "approved", f"approved by {by}; admitted when the coordinator asks again"
    if approval.status == "denied":
        return "denied", f"denied by {by}: {approval.reason or 'no reason given'}"
    return "expired", f"request expired at {_when(approval.decided)}: {approval.reason}"


def build_jobs(
    plans: Mapping[str, PlanRecord],
    releases: Mapping[str, Sequence[tuple[str, int, str]]],
    charged: Mapping[str, tuple[float, float] | None],
    records: Sequence[AuditRecord],
    *,
    now: float,
    approvals: Mapping[str, ApprovalRecord] | None = None,
) -> list[JobView]:
    """One view per job id in ``plans``, ``approvals`` or the audit ``records`` (budget records aside),
    newest first."""
    approvals = approvals or {}
    by_job: dict[str, list[AuditRecord]] = {}
    for rec in records:
        if rec.kind not in ("budget",):
            by_job.setdefault(rec.job_id, []).append(rec)
    ids = list(dict.fromkeys([*by_job, *plans, *approvals]))
    views = [
        _view(
            job_id,
            plans.get(job_id),
            releases.get(job_id, ()),
            charged.get(job_id),
            by_job.get(job_id, []),
            now,
            approvals.get(job_id),
        )
        for job_id in ids
    ]
    return sorted(views, key=lambda v: v.first_seen, reverse=True)


def _view(
    job_id: str,
    plan: PlanRecord | None,
    releases: Sequence[tuple[str, int, str]],
    charged: tuple[float, float] | None,
    records: Sequence[AuditRecord],
    now: float,
    approval: ApprovalRecord | None = None,
) -> JobView:
    refusals = [r for r in records if r.kind == "refuse"]
    state, reason = job_state(plan, refusals[-1].released if refusals else "", now=now, approval=approval)
    asked = {r.actor for r in records if r.kind not in DECISIONS}  # the operator decides, never asks
    common: dict[str, Any] = dict(
        job_id=job_id,
        state=state,
        reason=reason,
        requested_by=tuple(sorted(asked)) or ("(not recorded)",),
        first_seen=min(
            [r.time for r in records]
            + ([plan.created] if plan else [])
            + ([approval.requested] if approval else [])
        ),
        refused_releases=len(refusals) if plan is not None else 0,
        charged_epsilon=None if charged is None else charged[0],
        charged_delta=None if charged is None else charged[1],
        records=tuple(records),
        approval=approval,
    )
    if plan is None and approval is not None:
        return JobView(kind=str(approval.summary.get("kind", "unknown")), **common, **_requested(approval))
    if plan is None:
        return JobView(kind="unknown", **common)
    return JobView(**common, **_plan_fields(plan), releases=_releases(releases, records))


def _plan_fields(plan: PlanRecord) -> dict[str, Any]:
    """What the stored plan says: kind, mechanisms, rounds, planned releases and their cost."""
    summary = plan.summary
    statistics = summary.get("kind") == "statistics"
    if statistics:
        planned = tuple(
            {"what": q.get("name"), "epsilon": q.get("epsilon")} for q in summary.get("queries", [])
        )
        mechanisms = tuple(str(q.get("name")) for q in summary.get("queries", []))
    else:
        planned = tuple(summary.get("releases", []))
        mechanisms = tuple(str(m) for m in summary.get("mechanisms", []))
    return dict(
        kind="statistics" if statistics else "training",
        dataset=plan.dataset,
        digest=plan.digest,
        admitted=plan.created,
        expires=_iso(plan.expires),
        mechanisms=mechanisms,
        rounds=None if statistics else int(plan.limits.get("train", 0)),
        limits=dict(plan.limits),
        planned_epsilon=_number(summary.get("epsilon")),
        delta=_number(summary.get("delta")),
        unit=summary.get("unit"),
        plan_releases=planned,
    )


def _requested(approval: ApprovalRecord) -> dict[str, Any]:
    """What a job awaiting (or refused) approval asked for, from its stored request."""
    summary = approval.summary
    statistics = summary.get("kind") == "statistics"
    queries = summary.get("queries", [])
    names = [q.get("name") for q in queries] if statistics else summary.get("mechanisms", [])
    return dict(
        dataset=approval.dataset,
        digest=approval.digest,
        mechanisms=tuple(str(n) for n in names),
        rounds=None if statistics else summary.get("rounds"),
        planned_epsilon=_number(summary.get("epsilon")),
        delta=_number(summary.get("delta")),
        unit=summary.get("unit"),
        plan_releases=tuple(
            {"what": q.get("name"), "epsilon": q.get("epsilon")} for q in queries
        ) if statistics else tuple(summary.get("releases", [])),
    )  # fmt: skip


def _releases(
    given: Sequence[tuple[str, int, str]], records: Sequence[AuditRecord]
) -> tuple[ReleaseView, ...]:
    """The ledger's answers, each with the charge its audit record states (the first such record)."""
    audited: dict[str, AuditRecord] = {}
    for rec in records:
        if rec.kind == "release":
            audited.setdefault(rec.released, rec)
    out = []
    for kind, rnd, when in given:
        found = audited.get(f"{kind} round {rnd}")
        if found is not None and (found.epsilon > 0 or found.delta > 0):
            out.append(ReleaseView(kind, rnd, when, found.epsilon, found.delta))
        else:
            out.append(ReleaseView(kind, rnd, when, None, None))
    return tuple(out)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _when(iso: str) -> str:
    return iso[:19].replace("T", " ") + " UTC" if iso else "-"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()

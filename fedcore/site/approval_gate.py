"""Approval by a person (``[node] approval = "manual"``): the site's side of a job's admission, and
the operator's decisions.

``check_approval`` runs inside the site's admission (``SiteRuntime.admit``, ``SiteStatistics.admit``)
after the plan is built and before it is reserved, idempotent on the job id and digest:

- no request yet: store one, pending, with what the plan would release (``fedcore.site.approvals``),
  audit it (``request``) and answer *pending* (``ApprovalPendingError``);
- pending: answer pending again; past the site's ``approval_timeout_hours``: mark it expired
  (``expire``), refuse ("approval timed out");
- denied: refuse, saying who denied it, when and why; expired: refuse;
- approved: the normal admission goes on (the plan is reserved and the budget checked then), unless
  the plan now costs more than the plan the operator approved (the site's policy changed since);
- a known job id with another digest: refuse (a job id names one job).

A pending request holds no budget and nothing is charged before an approved job's first answer: a
denied or expired job costs nothing. The coordinator is never blocked: it asks again
(``fedcore.flower.protocol.admit``) and, when it stops waiting, tells the site to cancel
(``withdraw``: the request expires). ``decide_job`` is what ``fedcore approve``, ``fedcore deny``
and the console's buttons call: one audited decision (``approve``, ``deny``) with the operator's name.
Under ``approval = "auto"`` only a job a person denied earlier stays refused.
"""

from __future__ import annotations

import getpass
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcore.config.site import SiteConfig
from fedcore.errors import ApprovalPendingError, ConfigError, PolicyError
from fedcore.site.approvals import ApprovalBook, ApprovalRecord, ApprovalStatus, Audit
from fedcore.site.audit import AuditKind
from fedcore.site.guard import SiteGuard
from fedcore.site.plan import SitePlan

if TYPE_CHECKING:
    from fedcore.analytics.query import QueryRequest
    from fedcore.analytics.site import StatisticsPlan
    from fedcore.config.job import JobRequest

__all__ = ["approval_summary", "check_approval", "decide_job", "operator_name", "withdraw"]

MAX_NAME = 80


def operator_name(name: str | None) -> str:
    """Who decides: ``name`` (one line of 1 to 80 printable characters), by default the OS user."""
    if name is None:
        try:
            name = getpass.getuser()
        except (OSError, KeyError):  # no user name in the environment or the password database
            name = "operator"
    name = name.strip()
    if not 0 < len(name) <= MAX_NAME or not name.isprintable():
        raise ConfigError(
            f"the operator's name must be 1 to {MAX_NAME} printable characters on one line, got {name!r}; "
            "give it with --as NAME (or in the console's name field)"
        )
    return name


def approval_summary(request: JobRequest | QueryRequest, plan: SitePlan | StatisticsPlan) -> dict[str, Any]:
    """What the operator is asked to approve: the site's plan for the job, in brief."""
    summary = plan.summary()
    out: dict[str, Any] = {
        "kind": "training" if isinstance(plan, SitePlan) else "statistics",
        "epsilon": plan.epsilon,
        "delta": plan.delta,
        "unit": summary.get("unit"),
        "num_sites": request.num_sites,
    }
    if isinstance(plan, SitePlan):
        out |= {
            "rounds": plan.rounds,
            "mechanisms": [m.name for m in plan.mechanisms],
            "releases": summary["releases"],
        }
    else:
        out["queries"] = summary["queries"]
    return out


def _text(summary: Mapping[str, Any]) -> str:
    """The request in one line (the audit record and the console)."""
    cost = f"epsilon at most {summary['epsilon']:.4g} at delta {summary['delta']:g}"
    if summary["kind"] == "statistics":
        what = "; ".join(f"{q['name']} (epsilon {q['epsilon']:g})" for q in summary["queries"])
        return f"statistics, {cost}: {what}; sent to {summary['num_sites']} sites"
    releases = "; ".join(f"{r['what']} x{r['count']}: {r['protection']}" for r in summary["releases"])
    mechanisms = ", ".join(summary["mechanisms"]) or "no DP mechanism"
    rounds = f"{summary['rounds']} round{'s' if summary['rounds'] != 1 else ''}"
    return f"training, {rounds} ({mechanisms}), {cost}, sent to {summary['num_sites']} sites: {releases}"


def _auditor(guard: SiteGuard, kind: AuditKind, actor: str, text: Callable[[ApprovalRecord], str]) -> Audit:
    def audit(rec: ApprovalRecord) -> tuple[int, str]:
        written = guard.audit.append(
            actor=actor, kind=kind, job_id=rec.job_id, released=text(rec), epsilon=0.0, delta=0.0
        )
        return written.seq, written.hash

    return audit


def check_approval(
    guard: SiteGuard, request: JobRequest | QueryRequest, plan: SitePlan | StatisticsPlan, *, actor: str
) -> None:
    """Admit ``request`` only as its operator decided (see the module's docstring); raises
    ``ApprovalPendingError`` while undecided, ``PolicyError`` when refused; returns when approved
    (or when the site admits automatically)."""
    site, book = guard.site, ApprovalBook(guard.ledger)
    rec = book.get(request.job_id)
    if site.approval == "auto" and (rec is None or rec.status != "denied"):
        return
    if rec is None:
        summary = approval_summary(request, plan)
        text = _text(summary)
        audit = _auditor(
            guard, "request", actor, lambda r: f"approval requested until {r.deadline_iso}: {text}"
        )
        rec, _ = book.request(
            request.job_id, digest=plan.digest, dataset=site.dataset, summary=summary, text=text,
            wait_seconds=3600.0 * site.approval_timeout_hours, audit=audit,
        )  # fmt: skip
        guard.keep_head()
    who = f"site {site.name!r}"
    if rec.digest != plan.digest:
        raise PolicyError(
            f"{who}: job id {request.job_id!r} was requested with other settings (digest {rec.digest[:12]}, "
            f"now {plan.digest[:12]}); a job id names one job: submit the changed job under a new id"
        )
    if rec.overdue():
        rec = _expire(guard, book, rec, "no decision before the site's deadline", actor="site")
    _admit_if_approved(rec, who, plan.epsilon)


def _admit_if_approved(rec: ApprovalRecord, who: str, epsilon: float) -> None:
    job = repr(rec.job_id)
    if rec.status == "pending":
        raise ApprovalPendingError(
            f"{who} admits job {job} only once its operator approves it (`fedcore approve` or the site's "
            f"console); waiting until {rec.deadline_iso}"
        )
    if rec.status == "denied":
        why = rec.reason or "no reason given"
        raise PolicyError(
            f"{who}: job {job} was denied by its operator {rec.decided_by} at {rec.decided}: {why}"
        )
    if rec.status == "expired":
        raise PolicyError(
            f"{who}: approval of job {job} timed out ({rec.reason}); nothing was run or charged"
        )
    approved = rec.summary.get("epsilon")
    if isinstance(approved, int | float) and math.isfinite(approved) and epsilon > approved + 1e-9:
        raise PolicyError(
            f"{who}: its plan for job {job} now costs epsilon {epsilon:.4g}, more than the {approved:.4g} "
            f"{rec.decided_by} approved (the site's policy changed since); the job must be submitted again"
        )


def _expire(
    guard: SiteGuard, book: ApprovalBook, rec: ApprovalRecord, reason: str, *, actor: str
) -> ApprovalRecord:
    """Mark a pending request expired, audited; the request as stored when another decision won."""
    audit = _auditor(guard, "expire", actor, lambda r: f"approval request expired: {reason}")
    try:
        after = book.decide(rec.job_id, "expired", by=actor, reason=reason, audit=audit)
    except PolicyError:  # decided meanwhile (a concurrent decision): that one stands
        return book.get(rec.job_id) or rec
    guard.keep_head()
    return after


def withdraw(guard: SiteGuard, job_id: str, *, actor: str) -> ApprovalRecord | None:
    """The coordinator stopped waiting (it cancels the job): a pending request expires. Returns the
    request as it stands (``None``: there is none)."""
    book = ApprovalBook(guard.ledger)
    rec = book.get(job_id)
    if rec is None or rec.status != "pending":
        return rec
    return _expire(guard, book, rec, "the coordinator stopped waiting for the decision", actor=actor)


def decide_job(
    site: SiteConfig,
    state_dir: Path | None,
    job_id: str,
    *,
    approve: bool,
    by: str,
    reason: str = "",
    digest: str | None = None,
    via: str = "command line",
) -> ApprovalRecord:
    """The operator's decision on a pending request, audited with ``by`` as its actor (``fedcore
    approve``/``deny``, the console's buttons). ``digest``: the request the operator saw (refused if
    the stored one differs). ``ConfigError`` for an unknown job, ``PolicyError`` when it was decided
    before or timed out (then it is marked expired)."""
    guard = SiteGuard(site, state_dir)
    book = ApprovalBook(guard.ledger)
    rec = book.get(job_id)
    if rec is None and site.approval == "auto":
        raise ConfigError(
            f"site {site.name!r} has no approval request for job {job_id!r}: it admits jobs automatically "
            f'(set [node] approval = "manual" in {site.path} to decide each job)'
        )
    if rec is not None and rec.overdue():
        _expire(guard, book, rec, "no decision before the site's deadline", actor="site")
        raise PolicyError(
            f"the request of job {job_id!r} timed out at {rec.deadline_iso} and expired; the coordinator "
            "must submit the job again"
        )
    status: ApprovalStatus = "approved" if approve else "denied"
    note = f": {reason}" if reason else ""
    audit = _auditor(guard, "approve" if approve else "deny", by, lambda r: f"{status} ({via}){note}")
    after = book.decide(job_id, status, by=by, reason=reason, digest=digest, audit=audit)
    guard.keep_head()
    return after

"""The site's guard: every release passes through it, checked against the job's plan, charged, audited.

Two-phase admission. ``admit`` (before round 1) records the plan bound to the job's digest and
reserves its cost; nothing is charged. ``release`` (every train or evaluate answer) refuses anything
outside the plan (unknown or cancelled job, changed settings under a known id, a round beyond the
plan or answered twice) and charges that answer (``PlanBook.release``: per round answered, no
amplification by the coordinator's sampling counted), in one ledger transaction, before any work.
``cancel`` frees a reservation that released nothing, so a job that releases nothing costs nothing.
Every decision is an audit record; an audit record is never a charge (the ledger is).

State lives in the site's own folder (``state_dir/<site>/``: ledger, audit log, HE secret key in a
simulation), 0700 with 0600 files, and is never created implicitly: ``init_site_state`` is the
explicit step (``fedcore ledger SITE --init``); a missing ledger or a truncated audit log fails closed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp_accounting.dp_event import DpEvent

from fedcore.analytics.query import QueryRequest
from fedcore.config.job import JobRequest
from fedcore.config.site import SiteConfig
from fedcore.errors import AuditError, PolicyError
from fedcore.privacy.accounting import gaussian_event, laplace_event
from fedcore.privacy.mechanisms import PrivacyUnit
from fedcore.privacy.rng import Source
from fedcore.site.audit import AuditKind, AuditLog, VerifyReport
from fedcore.site.head import HeadCopy, read_head_copy, write_head_copy
from fedcore.site.ledger import ChargeRecord, PrivacyLedger, ReleaseKind
from fedcore.site.plan import PublicSize, SitePlan
from fedcore.site.plans import PlanBook, PlanRecord

__all__ = [
    "SiteGuard",
    "StatePaths",
    "accept_rollback",
    "check_anchor",
    "init_site_state",
    "raise_budget",
    "state_paths",
]


@dataclass(frozen=True)
class StatePaths:
    """Where one site keeps its state."""

    folder: Path
    ledger: Path
    audit: Path
    he_secret_key: Path
    head_copy: Path  # a copy of the audit head outside the folder (``fedcore.site.head``)


def state_paths(site: SiteConfig, state_dir: Path | None) -> StatePaths:
    """``state_dir/<site>/`` (default ``.fedcore/`` next to the site file), or the policy's paths."""
    base = (state_dir if state_dir is not None else site.path.parent / ".fedcore") / site.name
    policy = site.policy
    return StatePaths(
        base,
        policy.ledger or base / "ledger.db",
        policy.audit or base / "audit.db",
        policy.he_secret_key or base / "he_secret.ctx",
        site.head_copy or base.parent / ".heads" / f"{site.name}.head",
    )


def init_site_state(site: SiteConfig, state_dir: Path | None) -> StatePaths:
    """Create the site's ledger and audit log (the explicit first step of a new site).

    Refuses (``LedgerError``/``AuditError``) to replace existing files.
    """
    paths = state_paths(site, state_dir)
    PrivacyLedger.create(paths.ledger, site=site.name)
    AuditLog.create(paths.audit)
    return paths


def raise_budget(site: SiteConfig, state_dir: Path | None, *, actor: str = "operator") -> None:
    """Apply a site file's raised budget to its ledger: an explicit, audited operator step."""
    paths = state_paths(site, state_dir)
    policy = site.policy
    if policy.budget_epsilon is None:
        raise PolicyError(f"{site.path} sets no [privacy] budget_epsilon to raise the budget to")
    ledger = PrivacyLedger(paths.ledger, site=site.name)
    ledger.set_budget(
        site.dataset, epsilon=policy.budget_epsilon, delta=policy.budget_delta, allow_increase=True
    )
    SiteGuard(site, state_dir).record(
        "budget",
        "-",
        f"budget of {site.dataset!r} set to epsilon {policy.budget_epsilon:g}, delta {policy.budget_delta:g}",
        actor=actor,
    )


def accept_rollback(site: SiteConfig, state_dir: Path | None, *, actor: str = "operator") -> float:
    """The documented recovery of a site whose state folder was rolled back and whose newest state is
    lost (``fedcore.site.head``): charge the dataset, conservatively, the whole spending the head copy
    recorded (a pure-epsilon event of that size: composed with the restored charges, the total is at
    least what was spent), move the copy to the restored head, and audit it. Returns the epsilon
    charged (0 when the copy recorded none)."""
    paths = state_paths(site, state_dir)
    copy = read_head_copy(paths.head_copy)
    if copy is None:
        raise AuditError(f"no head copy at {paths.head_copy}: there is no rollback to accept")
    ledger = PrivacyLedger(paths.ledger, site=site.name)
    lost = copy.spent.get(site.dataset, 0.0)
    charge = None
    if lost > 0:  # the restored ledger holds the dataset's budget: spending needs one
        lost_event = laplace_event(noise_multiplier=1.0 / lost)
        charge = ledger.charge(site.dataset, "rollback", [lost_event], spent=True)
    seq, digest = ledger.audit_head()
    write_head_copy(paths.head_copy, HeadCopy(site.name, seq, digest, copy.spent))
    text = (
        f"state folder restored behind its head copy (record {copy.seq}, {copy.hash[:16]}; restored at "
        f"{seq}); the lost spending charged as epsilon {lost:.4g} (the copy's whole spending, conservatively)"
    )
    SiteGuard(site, state_dir).record("restore", "-", text, actor=actor, charge=charge)
    return lost


def check_anchor(ledger: PrivacyLedger, audit: AuditLog) -> VerifyReport:
    """The audit log's chain must verify and still hold the head the ledger recorded (no truncation,
    no rewrite); ``AuditError`` if not. What a node checks at start and ``fedcore audit verify`` runs."""
    seq, digest = ledger.audit_head()
    report = audit.verify()
    if not report.ok:
        raise AuditError(f"audit log {audit.path} is broken: {'; '.join(report.problems)}")
    if seq == 0:
        return report
    at = next((r for r in audit.records() if r.seq == seq), None)
    if at is None or at.hash != digest:
        raise AuditError(
            f"audit log {audit.path} does not hold record {seq} with the hash the ledger anchored "
            f"({digest[:16]}): the log was truncated or replaced. fedcore fails closed: restore it "
            "from a backup"
        )
    return report


class SiteGuard:
    """One site's ledger and audit log, and the rules every release of that site follows."""

    def __init__(self, site: SiteConfig, state_dir: Path | None) -> None:
        self.site, self.paths = site, state_paths(site, state_dir)
        self.ledger = PrivacyLedger(self.paths.ledger, site=site.name)
        self.plans = PlanBook(self.ledger)
        self.audit = AuditLog(self.paths.audit)
        self._check_anchor()
        policy = site.policy
        if policy.budget_epsilon is not None:
            self.ledger.set_budget(site.dataset, epsilon=policy.budget_epsilon, delta=policy.budget_delta)
        self._spent = self._check_head_copy()

    def _check_anchor(self) -> None:
        check_anchor(self.ledger, self.audit)

    def _spending(self) -> dict[str, float]:
        """Epsilon spent on the site's dataset (composed), for the head copy ({} without a budget)."""
        if self.site.policy.budget_epsilon is None:
            return {}
        return {self.site.dataset: self.ledger.spent(self.site.dataset)[0]}

    def _check_head_copy(self) -> dict[str, float]:
        """Refuse a state folder rolled back behind its head copy (``fedcore.site.head``); write the
        copy when there is none yet. Returns the spending the copy now records."""
        path, (seq, digest) = self.paths.head_copy, self.ledger.audit_head()
        copy = read_head_copy(path)
        if copy is not None and copy.site == self.site.name and copy.seq > 0:
            at = next((r for r in self.audit.records() if r.seq == copy.seq), None)
            if at is None or at.hash != copy.hash:
                raise AuditError(
                    f"site {self.site.name!r}: its state folder {self.paths.folder} was rolled back or "
                    f"replaced: its audit log ends at record {seq}, but the head copy {path} says record "
                    f"{copy.seq} ({copy.hash[:16]}) was written. fedcore refuses to start (it would forget "
                    "spending and answer released rounds again). Restore the newest state folder; if it "
                    "is lost, run `fedcore audit accept-rollback SITE_FILE` (charges the lost spending; "
                    "docs/privacy.md)"
                )
            if (copy.seq, copy.hash) == (seq, digest):
                return copy.spent
        spent = self._spending()
        write_head_copy(path, HeadCopy(self.site.name, seq, digest, spent))
        return spent

    def _keep_head(self, charged: bool) -> None:
        """After an audit record: the head copy follows the anchored head (the spending: after a charge)."""
        seq, digest = self.ledger.audit_head()
        if charged:
            self._spent = self._spending()
        write_head_copy(self.paths.head_copy, HeadCopy(self.site.name, seq, digest, self._spent))

    def keep_head(self) -> None:
        """The head copy follows an audit record that another book anchored in its own ledger
        transaction (``fedcore.site.approvals``: a decision commits with its record)."""
        self._keep_head(False)

    def record(
        self, kind: AuditKind, job_id: str, released: str, *, actor: str, charge: ChargeRecord | None = None
    ) -> tuple[int, str]:
        """Append an audit record (its epsilon: the charge made now, if any) and anchor the head."""
        seq, digest = self._append(kind, job_id, released, actor=actor, charge=charge)
        self.ledger.set_audit_head(seq, digest)
        self._keep_head(charge is not None)
        return seq, digest

    def _append(
        self, kind: AuditKind, job_id: str, released: str, *, actor: str, charge: ChargeRecord | None
    ) -> tuple[int, str]:
        """Append an audit record; returns the log's new head (seq, hash), not yet anchored."""
        rec = self.audit.append(
            actor=actor,
            kind=kind,
            job_id=job_id,
            released=released,
            epsilon=0.0 if charge is None else charge.epsilon,
            delta=0.0 if charge is None else charge.delta,
        )
        return rec.seq, rec.hash

    def public_size(
        self, n: int, *, dp: bool, source: Source, unit: PrivacyUnit = "example", job_id: str = ""
    ) -> PublicSize:
        """The training-set size to use in public quantities for a job (see ``SitePolicy``).

        ``n`` counts rows, or customers under customer-level DP (``unit = "customer"``): one customer
        changes the count of customers by one (sensitivity 1) but the count of rows by all its rows.
        The size's event comes with it while it is this job's to pay: not charged yet, or charged by
        ``job_id``'s own admitted plan (so a plan rebuilt after its first answer calibrates as before).
        """
        policy = self.site.policy
        if not dp:
            return PublicSize(n, how="exact (this job has no DP)")
        if policy.dataset_size == "public":
            return PublicSize(n, how="exact, uncharged (site policy dataset_size = 'public')")
        std = policy.dataset_size_noise
        key = f"train_customers:{n}" if unit == "customer" else f"train_size:{n}"
        kept = self.plans.released_value(self.site.dataset, key)
        if kept is None:
            noisy = max(1.0, float(round(n + source.normal_array(1, std=std)[0])))
            kept = self.plans.keep_value(self.site.dataset, key, noisy, gaussian_event(noise_multiplier=std))
        value, event, charged = kept
        admitted = self.plans.plan(job_id) if charged and job_id else None
        earlier = charged and (admitted is None or key not in admitted.summary.get("values", ()))
        how = f"DP count (Gaussian noise, std {std:g}), released once and reused" + (
            "; charged by an earlier job" if earlier else ""
        )
        return PublicSize(int(value), None if earlier else event, key, how)

    def admit(self, request: JobRequest, plan: SitePlan, *, actor: str) -> PlanRecord:
        """Reserve a training job's plan (nothing charged yet) and audit the admission."""
        text = f"plan reserved: epsilon {plan.epsilon:.4g}, {_releases(plan)}"
        summary = {  # charged per answer (PlanBook.release); mechanisms named for the site's console
            **plan.summary(),
            "charging": plan.charging,
            "mechanisms": [m.name for m in plan.mechanisms],
        }
        return self.reserve(request.job_id, plan.digest, plan.events, plan.limits, summary, text, actor=actor)

    def reserve(
        self,
        job_id: str,
        digest: str,
        events: Sequence[DpEvent],
        limits: Mapping[str, int],
        summary: Mapping[str, Any],
        text: str,
        *,
        actor: str,
    ) -> PlanRecord:
        """Reserve any plan's cost (training or statistics; nothing charged yet) and audit it."""
        rec = self.plans.reserve(
            self.site.dataset,
            job_id,
            digest=digest,
            events=events,
            limits=limits,
            summary=summary,
            hold_seconds=3600.0 * self.site.policy.reservation_hours,
        )
        self.record("admit", job_id, text, actor=actor)
        return rec

    def release(
        self, request: JobRequest | QueryRequest, kind: ReleaseKind, server_round: int, *, actor: str
    ) -> tuple[PlanRecord, ChargeRecord | None]:
        """Allow one answer inside the plan (charging it at the first); raises ``PolicyError`` if not."""
        job_id = request.job_id
        audited = False

        def audit(charge: ChargeRecord | None) -> tuple[int, str]:  # inside the ledger's transaction
            nonlocal audited
            audited = True
            return self._append("release", job_id, f"{kind} round {server_round}", actor=actor, charge=charge)

        try:
            released = self.plans.release(
                job_id, digest=request.digest, kind=kind, round=server_round, audit=audit
            )
        except Exception as err:
            if not audited:  # refused by the plan (an audit log that fails cannot record a refusal)
                self.record("refuse", job_id, f"{kind} round {server_round} refused: {err}", actor=actor)
            raise
        self._keep_head(released[1] is not None)
        return released

    def cancel(self, job_id: str, *, actor: str) -> str | None:
        status = self.plans.cancel(job_id)
        if status is not None:
            self.record("cancel", job_id, f"cancel requested; job status {status}", actor=actor)
        return status

    def budget_report(self) -> dict[str, float]:
        """Budget and remaining epsilon of the site's dataset (empty without a budget)."""
        if self.site.policy.budget_epsilon is None:
            return {}
        remaining, _ = self.ledger.remaining(self.site.dataset)
        return {"budget_epsilon": self.site.policy.budget_epsilon, "remaining_epsilon": remaining}


def _releases(plan: SitePlan) -> str:
    return "; ".join(
        f"{r.what} x{r.count}: {r.protection}"
        + ("" if r.epsilon is None or not math.isfinite(r.epsilon) else f" (epsilon {r.epsilon:.3g})")
        for r in plan.releases
    )

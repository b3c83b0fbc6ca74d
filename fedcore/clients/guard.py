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
from fedcore.privacy.accounting import gaussian_event
from fedcore.privacy.audit import AuditKind, AuditLog, VerifyReport
from fedcore.privacy.ledger import ChargeRecord, PrivacyLedger, ReleaseKind
from fedcore.privacy.mechanisms import PrivacyUnit
from fedcore.privacy.plan import PublicSize, SitePlan
from fedcore.privacy.plans import PlanBook, PlanRecord
from fedcore.privacy.rng import Source

__all__ = ["SiteGuard", "StatePaths", "check_anchor", "init_site_state", "raise_budget", "state_paths"]


@dataclass(frozen=True)
class StatePaths:
    """Where one site keeps its state."""

    folder: Path
    ledger: Path
    audit: Path
    he_secret_key: Path


def state_paths(site: SiteConfig, state_dir: Path | None) -> StatePaths:
    """``state_dir/<site>/`` (default ``.fedcore/`` next to the site file), or the policy's paths."""
    base = (state_dir if state_dir is not None else site.path.parent / ".fedcore") / site.name
    policy = site.policy
    return StatePaths(
        base,
        policy.ledger or base / "ledger.db",
        policy.audit or base / "audit.db",
        policy.he_secret_key or base / "he_secret.ctx",
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

    def _check_anchor(self) -> None:
        check_anchor(self.ledger, self.audit)

    def record(
        self, kind: AuditKind, job_id: str, released: str, *, actor: str, charge: ChargeRecord | None = None
    ) -> tuple[int, str]:
        """Append an audit record (its epsilon: the charge made now, if any) and anchor the head."""
        seq, digest = self._append(kind, job_id, released, actor=actor, charge=charge)
        self.ledger.set_audit_head(seq, digest)
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

    def public_size(self, n: int, *, dp: bool, source: Source, unit: PrivacyUnit = "example") -> PublicSize:
        """The training-set size to use in public quantities for a job (see ``SitePolicy``).

        ``n`` counts rows, or customers under customer-level DP (``unit = "customer"``): one customer
        changes the count of customers by one (sensitivity 1) but the count of rows by all its rows.
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
        how = f"DP count (Gaussian noise, std {std:g}), released once and reused" + (
            "; charged by an earlier job" if charged else ""
        )
        return PublicSize(int(value), None if charged else event, key, how)

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
            return self.plans.release(
                job_id, digest=request.digest, kind=kind, round=server_round, audit=audit
            )
        except Exception as err:
            if not audited:  # refused by the plan (an audit log that fails cannot record a refusal)
                self.record("refuse", job_id, f"{kind} round {server_round} refused: {err}", actor=actor)
            raise

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

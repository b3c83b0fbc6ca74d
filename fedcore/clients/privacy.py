"""The site's side of privacy accounting: its ledger, its audit log, and admitting a job.

A job is admitted (its whole planned privacy cost charged atomically) before the site does any
work for it; a job that does not fit the budget is refused with what was asked and what is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dp_accounting.dp_event import DpEvent

from fedcore.clients.policy import SitePolicy
from fedcore.config import SiteConfig
from fedcore.errors import PolicyError
from fedcore.privacy.audit import AuditLog
from fedcore.privacy.ledger import PrivacyLedger

__all__ = ["Admission", "SitePrivacy", "default_state_dir"]


def default_state_dir(site: SiteConfig) -> Path:
    """Where a real node keeps its ledger and audit log unless its site file names paths."""
    return site.path.parent / ".fedcore"


@dataclass(frozen=True)
class Admission:
    """A job the site accepted: what it will release and what that costs."""

    job_id: str
    epsilon: float
    delta: float
    budget_epsilon: float | None
    remaining_epsilon: float | None


class SitePrivacy:
    """Ledger + audit log of one site, with its budget from the site file."""

    def __init__(self, site: SiteConfig, policy: SitePolicy, state_dir: Path | None = None) -> None:
        self.site, self.policy = site, policy
        base = state_dir if state_dir is not None else default_state_dir(site)
        self.ledger_path = policy.ledger or base / f"{site.name}.ledger.db"
        self.audit_path = policy.audit or self.ledger_path.with_name(f"{site.name}.audit.db")
        self._admitted: dict[str, Admission] = {}

    def ledger(self) -> PrivacyLedger:
        ledger = PrivacyLedger(self.ledger_path, site=self.site.name)
        if self.policy.budget_epsilon is not None:
            ledger.set_budget(
                self.site.dataset, epsilon=self.policy.budget_epsilon, delta=self.policy.budget_delta
            )
        return ledger

    def audit(self) -> AuditLog:
        return AuditLog(self.audit_path)

    def admit(self, job_id: str, events: Sequence[DpEvent], *, actor: str, released: str) -> Admission:
        """Charge the job's whole plan once (idempotent per ``job_id``) and audit it.

        Raises ``BudgetExceededError`` (nothing charged, nothing run) when it does not fit, and
        ``PolicyError`` when the site has no budget to charge a DP job to.
        """
        if job_id in self._admitted:
            return self._admitted[job_id]
        earlier = self._already_admitted(job_id)
        if earlier is not None:
            self._admitted[job_id] = earlier
            return earlier
        if not events:
            self.audit().append(
                actor=actor, kind="job", job_id=job_id, released=released, epsilon=0.0, delta=0.0
            )
            adm = Admission(job_id, 0.0, 0.0, self.policy.budget_epsilon, None)
        else:
            if self.policy.budget_epsilon is None:
                raise PolicyError(
                    f"site {self.site.name!r} has no privacy budget, so it cannot pay for a DP job; "
                    f"set [privacy] budget_epsilon (and budget_delta) in {self.site.path}"
                )
            ledger = self.ledger()
            rec = ledger.charge(self.site.dataset, job_id, events)
            self.audit().append(
                actor=actor,
                kind="job",
                job_id=job_id,
                released=released,
                epsilon=rec.epsilon,
                delta=rec.delta,
            )
            remaining, _ = ledger.remaining(self.site.dataset)
            adm = Admission(job_id, rec.epsilon, rec.delta, self.policy.budget_epsilon, remaining)
        self._admitted[job_id] = adm
        return adm

    def _already_admitted(self, job_id: str) -> Admission | None:
        """The admission of ``job_id`` made earlier (maybe by another process of this node).

        The ledger is the authority on charges; a charge whose audit record is missing (a crash
        between the two writes) gets its record now.
        """
        budget = self.policy.budget_epsilon
        if budget is not None and self.ledger_path.exists():
            ledger = self.ledger()
            charges = [c for c in ledger.summary().charges if c.job_id == job_id]
            if charges:
                audited = self.audit_path.exists() and any(r.job_id == job_id for r in self.audit().records())
                if not audited:
                    self.audit().append(
                        actor="fedcore",
                        kind="job",
                        job_id=job_id,
                        released="(record restored from the ledger)",
                        epsilon=charges[0].epsilon,
                        delta=charges[0].delta,
                    )
                remaining = ledger.remaining(self.site.dataset)[0]
                return Admission(job_id, charges[0].epsilon, charges[0].delta, budget, remaining)
        if self.audit_path.exists():
            for rec in self.audit().records():
                if rec.kind == "job" and rec.job_id == job_id:
                    return Admission(job_id, rec.epsilon, rec.delta, budget, None)
        return None

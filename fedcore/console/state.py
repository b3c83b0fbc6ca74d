"""A read-only view of one site's state: its ledger and audit log, never its data.

Every figure comes from the functions ``fedcore ledger`` and ``fedcore audit verify`` use
(``PrivacyLedger.summary``, ``PrivacyLedger.check``, ``PrivacyLedger.job_charge``, ``check_anchor``),
on files opened read-only (SQLite ``mode=ro``): in WAL mode a reader never blocks the node's writes
and never writes, so the console is safe beside a running node. Each call reads the files anew; two
figures of one page may be one commit apart while a job runs, each of them consistent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedcore.config.site import SiteConfig
from fedcore.console.curve import coarse_first, curve_grid, fingerprints, remember
from fedcore.console.jobs import JobView, build_jobs
from fedcore.errors import AuditError, ConfigError, FedcoreError
from fedcore.privacy.accounting import epsilon, event_from_json
from fedcore.site.approvals import ApprovalBook
from fedcore.site.audit import AuditLog, AuditRecord
from fedcore.site.guard import StatePaths, check_anchor, state_paths
from fedcore.site.ledger import DatasetSummary, LedgerSummary, PrivacyLedger
from fedcore.site.plans import PlanBook

__all__ = [
    "BudgetView",
    "ChainView",
    "DatasetBudget",
    "SiteReader",
    "SpendPoint",
]


@dataclass(frozen=True)
class DatasetBudget:
    """One dataset's budget: the ``fedcore ledger --json`` figures, and what live reservations hold.

    ``committed_epsilon`` is the charges and the live reservations composed (what a new job is checked
    against, ``PrivacyLedger.check``); ``reserved_epsilon`` what the reservations add to ``spent``;
    ``available_epsilon`` what a new job could still get.
    """

    dataset: str
    budget_epsilon: float
    delta: float
    spent_epsilon: float
    remaining_epsilon: float
    num_charges: int
    committed_epsilon: float
    reserved_epsilon: float
    available_epsilon: float


@dataclass(frozen=True)
class SpendPoint:
    """The dataset's spent epsilon (all charges so far composed) just after one charge."""

    time: str
    epsilon: float
    job_id: str
    charge_id: int


@dataclass(frozen=True)
class BudgetView:
    """The budget page: every dataset's figures and its spending over time."""

    site: str
    ledger: str
    audit_head: str
    datasets: tuple[DatasetBudget, ...]
    spending: Mapping[str, tuple[SpendPoint, ...]]
    notes: tuple[str, ...] = ()
    curve_pending: Mapping[str, int] = field(default_factory=dict)  # points not composed yet, per dataset


@dataclass(frozen=True)
class ChainView:
    """The audit page: the same check as ``fedcore audit verify`` (chain, and the ledger's anchor)."""

    ok: bool
    path: str
    num_records: int
    head: str  # SEQ:HASH, as `fedcore ledger` prints it
    anchor: str  # the head the ledger last recorded
    problems: tuple[str, ...]
    records: tuple[AuditRecord, ...] = field(default=(), repr=False)


class SiteReader:
    """One site's ledger and audit log, read-only; never its data file.

    Parameters
    ----------
    site
        The parsed site file (its name, dataset, policy and state paths).
    state_dir
        Where the node keeps the site's state (``fedcore node --state-dir``; a simulation's
        ``RUN_DIR/sites``); default ``.fedcore/`` next to the site file.
    curve_seconds
        How long one read may spend composing new points of a spending curve (each point is a
        composition of every charge before it); the others come in later reads, coarse to fine.
    """

    def __init__(self, site: SiteConfig, state_dir: Path | None, *, curve_seconds: float = 2.0) -> None:
        self.site, self.curve_seconds, self.state_dir = site, curve_seconds, state_dir
        self.paths: StatePaths = state_paths(site, state_dir)
        self._lock = threading.Lock()
        self._points: dict[tuple[str, str], float] = {}
        self._charged: dict[tuple[str, int], tuple[float, float] | None] = {}
        self._checked: dict[tuple[object, ...], float] = {}

    def ledger(self) -> PrivacyLedger:
        """The ledger, opened read-only (``LedgerError`` if missing or unreadable)."""
        return PrivacyLedger(self.paths.ledger, site=self.site.name, read_only=True)

    def audit(self) -> AuditLog:
        """The audit log, opened read-only (``AuditError`` if missing or unreadable)."""
        return AuditLog(self.paths.audit, read_only=True)

    def check(self) -> None:
        """Both files open (what a console checks before it starts serving)."""
        self.ledger()
        self.audit()

    # --- budget -------------------------------------------------------------------------------

    def budget(self) -> BudgetView:
        """Per dataset: budget, spent, reserved and left; and the spending curve."""
        ledger = self.ledger()
        summary = ledger.summary()
        datasets = tuple(_dataset_budget(d, self._committed(ledger, summary, d)) for d in summary.datasets)
        curves = {d.dataset: self._spending(ledger, summary, d.dataset) for d in datasets}
        spending = {name: points for name, (points, _) in curves.items()}
        pending = {name: left for name, (_, left) in curves.items()}
        notes = self._notes(datasets) + tuple(
            f"the spending curve of {name!r} still lacks {left} of its points: they are composed as the "
            "page is read again (each is the ledger's epsilon right after that charge)"
            for name, left in pending.items()
            if left
        )
        head = _head(summary.audit_head)
        return BudgetView(summary.site, summary.path, head, datasets, spending, notes, pending)

    def _committed(self, ledger: PrivacyLedger, summary: LedgerSummary, d: DatasetSummary) -> float:
        """``PrivacyLedger.check``'s composition of the charges and the live reservations, kept while
        neither changes: the same charges (fingerprint), budget, and every plan's status, answers given
        and liveness (what the ledger's reservations depend on; a plan's events never change)."""
        book, now = PlanBook(ledger), time.time()
        plans = [p for j in book.job_ids() if (p := book.plan(j)) is not None and p.dataset == d.dataset]
        prints = fingerprints([c for c in summary.charges if c.dataset == d.dataset])
        key = (
            d.dataset, d.budget_epsilon, d.delta, prints[-1] if prints else "",
            tuple((p.job_id, p.status, tuple(sorted(p.released.items())), p.expires > now) for p in plans),
        )  # fmt: skip
        with self._lock:
            value = self._checked.get(key)
        if value is None:
            value = ledger.check(d.dataset, []).spent_epsilon
            with self._lock:
                remember(self._checked, key, value)
        return value

    def _spending(
        self, ledger: PrivacyLedger, summary: LedgerSummary, dataset: str
    ) -> tuple[tuple[SpendPoint, ...], int]:
        """The dataset's spent epsilon after its charges, each point ``epsilon`` of all charges up to it
        (the function and accountant the ledger answers with; the last point is the ledger's figure),
        and how many points are not composed yet. A point once composed is kept: charges are
        append-only (a file restored from a backup changes the charges' fingerprints)."""
        charges = [c for c in summary.charges if c.dataset == dataset]
        info = next(d for d in summary.datasets if d.dataset == dataset)
        prints, ks = fingerprints(charges), curve_grid(len(charges))
        with self._lock:
            values: dict[int, float | None] = {k: self._points.get((dataset, prints[k - 1])) for k in ks}
        if ks:
            values[ks[-1]] = info.spent_epsilon
        missing = [k for k in coarse_first(ks) if values[k] is None]
        deadline = time.monotonic() + self.curve_seconds
        events = [event_from_json(c.event_json) for c in charges] if missing else []
        for k in missing:
            if time.monotonic() >= deadline:
                break
            value = epsilon(events[:k], delta=info.delta, accountant=ledger.accountant)
            values[k] = value
            with self._lock:
                remember(self._points, (dataset, prints[k - 1]), value)
        points = [
            SpendPoint(charges[k - 1].time, v, charges[k - 1].job_id, charges[k - 1].id)
            for k in ks
            if (v := values[k]) is not None
        ]
        return tuple(points), len(ks) - len(points)

    def _notes(self, datasets: Sequence[DatasetBudget]) -> tuple[str, ...]:
        """Where the site file's budget differs from the ledger's (applied when the node next starts)."""
        policy, out = self.site.policy, []
        wanted = (policy.budget_epsilon, policy.budget_delta)
        for d in datasets:
            if (
                d.dataset == self.site.dataset
                and wanted[0] is not None
                and wanted != (d.budget_epsilon, d.delta)
            ):
                out.append(
                    f"the site file sets the budget of {d.dataset!r} to epsilon {wanted[0]:g}, delta "
                    f"{wanted[1]:g}; the ledger holds epsilon {d.budget_epsilon:g}, delta {d.delta:g} until "
                    "the node next starts (a raise needs `fedcore ledger SITE_FILE --raise-budget`)"
                )
        return tuple(out)

    # --- jobs ---------------------------------------------------------------------------------

    def jobs(self) -> tuple[JobView, ...]:
        """Every job the site has seen (admitted, or refused in its audit log), newest first."""
        ledger = self.ledger()
        book = PlanBook(ledger)
        records = self.audit().records()
        plans = {job_id: plan for job_id in book.job_ids() if (plan := book.plan(job_id)) is not None}
        releases = {job_id: book.releases(job_id) for job_id in plans}
        approvals = {a.job_id: a for a in ApprovalBook(ledger).all()}
        ids = {*plans, *approvals, *(r.job_id for r in records)}
        charged = {job_id: self._job_charge(ledger, job_id, len(releases.get(job_id, ()))) for job_id in ids}
        return tuple(build_jobs(plans, releases, charged, records, now=time.time(), approvals=approvals))

    def job(self, job_id: str) -> JobView:
        """One job (``ConfigError`` naming a few known ids when the site has never seen it)."""
        found = self.jobs()
        for job in found:
            if job.job_id == job_id:
                return job
        known = ", ".join(repr(j.job_id) for j in found[:10]) or "none"
        raise ConfigError(
            f"site {self.site.name!r} has seen no job {job_id!r} (latest: {known}); "
            "`fedcore ledger SITE_FILE` lists the charged ones"
        )

    def _job_charge(self, ledger: PrivacyLedger, job_id: str, answers: int) -> tuple[float, float] | None:
        """``PrivacyLedger.job_charge``, kept per (job, answers given): a job is charged only with an
        answer (``PlanBook.release``) and charges are append-only, so the figure is final for that key."""
        key = (job_id, answers)
        with self._lock:
            if key in self._charged:
                return self._charged[key]
        value = ledger.job_charge(job_id)
        if answers:  # a job without answers can still be charged by a non-plan path: never kept
            with self._lock:
                remember(self._charged, key, value)
        return value

    # --- audit chain --------------------------------------------------------------------------

    def chain(self) -> ChainView:
        """``fedcore audit verify``'s check, as a result (never raised): chain and ledger anchor."""
        anchor, path = "", str(self.paths.audit)
        try:
            ledger = self.ledger()
            anchor = _head(ledger.audit_head())
            audit = self.audit()
            report = check_anchor(ledger, audit)
        except AuditError as err:
            return self._broken(path, anchor, str(err))
        except FedcoreError as err:
            return ChainView(False, path, 0, "", anchor, (str(err),))
        records = tuple(audit.records())
        head = f"{report.head_seq}:{report.head_hash}"
        return ChainView(True, path, report.num_records, head, anchor, (), records)

    def _broken(self, path: str, anchor: str, problem: str) -> ChainView:
        try:
            audit = self.audit()
            report = audit.verify()
            head, n, records = f"{report.head_seq}:{report.head_hash}", report.num_records, audit.records()
        except FedcoreError:
            head, n, records = "", 0, []
        return ChainView(False, path, n, head, anchor, (problem,), tuple(records))


def _dataset_budget(d: DatasetSummary, committed: float) -> DatasetBudget:
    """One dataset's ``fedcore ledger`` figures, and ``committed`` (charges and live reservations)."""
    return DatasetBudget(
        d.dataset,
        d.budget_epsilon,
        d.delta,
        d.spent_epsilon,
        d.remaining_epsilon,
        d.num_charges,
        committed,
        max(0.0, committed - d.spent_epsilon),
        max(0.0, d.budget_epsilon - committed),
    )


def _head(head: tuple[int, str]) -> str:
    return f"{head[0]}:{head[1]}"

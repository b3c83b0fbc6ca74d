"""The per-site privacy ledger: one SQLite file with budgets, charges, job plans and releases.

Spending is the epsilon of *all stored events composed* by a ``dp_accounting`` accountant (PLD by
default) at the budget's delta, never a sum of per-charge epsilons. Every write checks and inserts
in one ``BEGIN IMMEDIATE`` transaction, so concurrent processes never overspend. An unreadable
file fails closed with ``LedgerError``; it is never treated as empty, and it is never created
implicitly: ``PrivacyLedger.create`` is an explicit step (``fedcore ledger SITE --init``), so a deleted
ledger cannot silently come back empty.

The file also holds the job plans of two-phase admission (``fedcore.site.plans``; live
reservations count against the budget here) and the audit log's head (``audit_head``), so
truncating or replacing the audit log is detected.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import get_args

from dp_accounting.dp_event import DpEvent, SelfComposedDpEvent

from fedcore.errors import BudgetExceededError, LedgerError, PolicyError, PrivacyError
from fedcore.privacy.accounting import AccountantName, accountant_for, epsilon, event_from_json
from fedcore.site.db import atomic_create, connect
from fedcore.site.ledger_schema import COLUMNS, SCHEMA, SCHEMA_VERSION, UPGRADES
from fedcore.site.records import (
    ChargeRecord,
    DatasetSummary,
    Decision,
    LedgerSummary,
    ReleaseKind,
    RunningTotal,
    events_json,
    now_iso,
)

__all__ = [
    "ChargeRecord",
    "DatasetSummary",
    "Decision",
    "LedgerSummary",
    "PrivacyLedger",
    "ReleaseKind",
    "RunningTotal",
]


class PrivacyLedger:
    """A site's privacy ledger in the SQLite file ``path`` (create it with ``PrivacyLedger.create``).

    Parameters
    ----------
    path
        The ledger file. A missing file raises ``LedgerError``: never recreated empty.
    site
        The site's name; opening another site's ledger raises ``LedgerError``.
    accountant
        ``"pld"`` (default) or ``"rdp"``: how stored events are composed.
    busy_timeout_s
        How long to wait for another process holding the write lock.
    read_only
        Open the file read-only (``mode=ro``): for readers beside a running node (the site's
        console); never writes, never upgrades an old file (any write raises ``LedgerError``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        site: str,
        accountant: AccountantName = "pld",
        busy_timeout_s: float = 60.0,
        read_only: bool = False,
    ) -> None:
        problems = []
        if not site.strip():
            problems.append("site must be a non-empty name")
        if accountant not in get_args(AccountantName):
            allowed = ", ".join(get_args(AccountantName))
            problems.append(f"accountant must be one of {allowed}, got {accountant!r}")
        if problems:
            raise LedgerError("; ".join(problems))
        self.path, self.site, self.accountant = Path(path), site, accountant
        self._timeout, self.read_only = busy_timeout_s, read_only
        if not self.path.exists():
            raise LedgerError(
                f"no privacy ledger at {self.path}: fedcore fails closed. If site {site!r} has never "
                "run, create it with `fedcore ledger SITE_FILE --init`; if it has, restore the file from a "
                "backup (a new, empty ledger would forget what the site has spent)"
            )
        self._validate()

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], *, site: str, accountant: AccountantName = "pld"
    ) -> PrivacyLedger:
        """Create a new, empty ledger for ``site`` (0600, in a 0700 folder); refuses an existing one."""
        path = Path(path)
        if not atomic_create(path, SCHEMA, {"site": site, "schema_version": SCHEMA_VERSION}):
            raise LedgerError(f"a ledger already exists at {path}; it is never replaced")
        return cls(path, site=site, accountant=accountant)

    # --- file handling ------------------------------------------------------------------------

    def _fail(self, what: str, err: BaseException | None = None) -> LedgerError:
        return LedgerError(
            f"privacy ledger {self.path} is unreadable or corrupt: {what}"
            f"{f' ({err})' if err else ''}. "
            "fedcore fails closed and runs nothing: restore this file from a backup (never delete "
            "it or its rows, or past spending would be forgotten)"
        )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with connect(self.path, timeout=self._timeout, fail=self._fail, read_only=self.read_only) as conn:
            yield conn

    def _validate(self) -> None:
        with self._connect() as conn:
            if conn.execute("PRAGMA quick_check").fetchone() != ("ok",):
                raise self._fail("SQLite integrity check failed")
            meta = self._meta(conn)
            added = UPGRADES.get(meta.get("schema_version", ""))
            if added is not None and not self.read_only:  # an older fedcore's: add the newer tables
                conn.executescript(
                    f"BEGIN IMMEDIATE; {added} UPDATE meta SET value = '{SCHEMA_VERSION}' "
                    "WHERE key = 'schema_version'; COMMIT;"
                )
                meta["schema_version"] = SCHEMA_VERSION
            elif added is not None:
                raise LedgerError(
                    f"ledger {self.path} is from an older fedcore and is opened read-only: run `fedcore "
                    "ledger SITE_FILE` once to upgrade it, then read it again"
                )
            for table, columns in COLUMNS.items():
                found = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
                if found != columns:
                    raise self._fail(f"table {table!r} has columns {found}, expected {columns}")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise self._fail(f"schema version {meta.get('schema_version')!r} != {SCHEMA_VERSION}")
        if meta.get("site") != self.site:
            raise LedgerError(
                f"ledger {self.path} belongs to site {meta.get('site')!r}, not {self.site!r}; "
                "point the site's ledger path at its own file"
            )

    def _meta(self, conn: sqlite3.Connection) -> dict[str, str]:
        try:
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as err:
            raise self._fail("table 'meta' is missing", err) from err

    # --- reading ------------------------------------------------------------------------------

    def _budget(self, conn: sqlite3.Connection, dataset: str) -> tuple[float, float]:
        row = conn.execute("SELECT epsilon, delta FROM budgets WHERE dataset = ?", (dataset,)).fetchone()
        if row is None:
            known = [r[0] for r in conn.execute("SELECT dataset FROM budgets ORDER BY dataset")]
            raise PolicyError(
                f"site {self.site!r} has no privacy budget for dataset {dataset!r} "
                f"(budgets exist for {known}); add it to site.toml, nothing runs without one"
            )
        return float(row[0]), float(row[1])

    def _events(self, conn: sqlite3.Connection, dataset: str) -> list[DpEvent]:
        events = []
        rows = conn.execute("SELECT id, event_json FROM charges WHERE dataset = ? ORDER BY id", (dataset,))
        for charge_id, text in rows:
            try:
                events.append(event_from_json(text))
            except PrivacyError as err:
                raise self._fail(f"charge id {charge_id} has an unreadable event", err) from err
        return events

    def _reserved(self, conn: sqlite3.Connection, dataset: str, *, besides: str) -> list[DpEvent]:
        """Events of other jobs' reservations that still hold budget: a whole plan while nothing is
        released; for a job charged per answer, its answers not given yet (until it ends or expires)."""
        rows = conn.execute(
            "SELECT job_id, events_json, status, limits_json, summary_json FROM plans WHERE dataset = ? "
            "AND status IN ('reserved', 'released') AND expires > ? AND job_id != ? AND events_json != ''",
            (dataset, time.time(), besides),
        ).fetchall()
        out = []
        for job_id, text, status, limits_json, summary_json in rows:
            try:
                if status == "reserved":
                    out.append(event_from_json(text))
                    continue
                charging = json.loads(summary_json).get("charging")
                if charging is None:  # charged whole at its first answer: nothing left to hold
                    continue
                given = dict(
                    conn.execute(
                        "SELECT kind, COUNT(*) FROM releases WHERE job_id = ? GROUP BY kind", (job_id,)
                    )
                )
                for kind, limit in json.loads(limits_json).items():
                    left = int(limit) - int(given.get(kind, 0))
                    if charging.get(kind) and left > 0:
                        out.append(SelfComposedDpEvent(event_from_json(charging[kind]), left))
            except (PrivacyError, ValueError, AttributeError) as err:
                raise self._fail(f"plan {job_id!r} has an unreadable event", err) from err
        return out

    def _decide(
        self,
        dataset: str,
        budget: tuple[float, float],
        stored: list[DpEvent],
        planned: list[DpEvent],
    ) -> Decision:
        budget_eps, delta = budget
        spent = epsilon(stored, delta=delta, accountant=self.accountant)
        projected = epsilon(stored + planned, delta=delta, accountant=self.accountant)
        requested = epsilon(planned, delta=delta, accountant=self.accountant)
        allowed = projected <= budget_eps
        reason = (
            f"site {self.site!r}, dataset {dataset!r}: asked for epsilon {requested:.4g} at delta "
            f"{delta:g}; spent {spent:.4g} of {budget_eps:.4g}, "
            f"{max(0.0, budget_eps - spent):.4g} left; composed total would be {projected:.4g}"
        )
        return Decision(allowed, dataset, requested, spent, projected, budget_eps, delta, reason)

    def _spent(self, conn: sqlite3.Connection, dataset: str) -> tuple[float, float, float]:
        budget_eps, delta = self._budget(conn, dataset)
        spent = epsilon(self._events(conn, dataset), delta=delta, accountant=self.accountant)
        return budget_eps, spent, delta

    def spent(self, dataset: str) -> tuple[float, float]:
        """(epsilon, delta) spent on ``dataset``: all stored events composed at the budget delta."""
        with self._connect() as conn:
            _, spent, delta = self._spent(conn, dataset)
        return spent, delta

    def remaining(self, dataset: str) -> tuple[float, float]:
        """(epsilon, delta) still available on ``dataset`` (never negative)."""
        with self._connect() as conn:
            budget_eps, spent, delta = self._spent(conn, dataset)
        return max(0.0, budget_eps - spent), delta

    def check(self, dataset: str, planned_events: Sequence[DpEvent]) -> Decision:
        """Would ``planned_events`` fit (charges and live reservations counted)? Reads only."""
        with self._connect() as conn:
            budget = self._budget(conn, dataset)
            stored = self._events(conn, dataset) + self._reserved(conn, dataset, besides="")
        return self._decide(dataset, budget, stored, list(planned_events))

    # --- charges ------------------------------------------------------------------------------

    def _insert_charge(
        self,
        conn: sqlite3.Connection,
        dataset: str,
        job_id: str,
        planned: list[DpEvent],
        besides: str = "",
        *,
        spent: bool = False,
    ) -> ChargeRecord:
        stored = self._events(conn, dataset) + self._reserved(conn, dataset, besides=besides)
        decision = self._decide(dataset, self._budget(conn, dataset), stored, planned)
        if not decision.allowed and not spent:  # ``spent``: already released, recorded whatever it costs
            raise BudgetExceededError(
                f"job {job_id!r} refused, nothing was run: {decision.reason}. Reduce rounds "
                "or steps, raise the noise, or raise the budget explicitly in site.toml"
            )
        row = (
            now_iso(), job_id, dataset, events_json(planned), decision.requested_epsilon, decision.delta,
            accountant_for(planned, self.accountant),  # "rdp" for secure-aggregation noise (zCDP)
        )  # fmt: skip
        cur = conn.execute(
            "INSERT INTO charges (time, job_id, dataset, event_json, epsilon, delta, "
            "accountant) VALUES (?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        return ChargeRecord(int(cur.lastrowid or 0), *row)

    def charge(
        self, dataset: str, job_id: str, events: Sequence[DpEvent], *, spent: bool = False
    ) -> ChargeRecord:
        """Check and record ``events`` for ``job_id`` in one transaction.

        Raises ``BudgetExceededError`` (nothing recorded) when the composed total (live
        reservations included) would exceed the budget; the message says what is left.
        ``spent=True`` records spending that already happened (a rolled-back state's lost charges)
        even beyond the budget, which then refuses all further work.
        """
        planned = list(events)
        if not planned:
            raise PrivacyError(f"charge for job {job_id!r} on {dataset!r} has no events")
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            rec = self._insert_charge(conn, dataset, job_id, planned, spent=spent)
            conn.commit()
        return rec

    def set_budget(self, dataset: str, *, epsilon: float, delta: float, allow_increase: bool = False) -> None:
        """Set ``dataset``'s budget from site.toml.

        The same value again is a no-op; lowering is allowed; raising epsilon or delta (loosening)
        raises ``PolicyError`` unless ``allow_increase=True``.
        """
        problems = []
        if not (math.isfinite(epsilon) and epsilon > 0):
            problems.append(f"epsilon must be finite and > 0, got {epsilon}")
        if not 0 < delta < 1:
            problems.append(f"delta must be in (0, 1), got {delta}")
        if problems:
            raise PolicyError(f"budget for dataset {dataset!r}: " + "; ".join(problems))
        with self._connect() as conn:
            same = conn.execute("SELECT epsilon, delta FROM budgets WHERE dataset = ?", (dataset,)).fetchone()
            if same is not None and tuple(same) == (epsilon, delta):
                return  # unchanged (every node start): no write transaction, no lock
            conn.execute("BEGIN IMMEDIATE")
            old = conn.execute("SELECT epsilon, delta FROM budgets WHERE dataset = ?", (dataset,)).fetchone()
            if old is not None and (epsilon > old[0] or delta > old[1]) and not allow_increase:
                raise PolicyError(
                    f"dataset {dataset!r} budget would rise from (epsilon={old[0]}, "
                    f"delta={old[1]}) to (epsilon={epsilon}, delta={delta}); raising a budget "
                    "must be explicit: `fedcore ledger SITE_FILE --raise-budget` (allow_increase=True)"
                )
            if old is None or tuple(old) != (epsilon, delta):
                conn.execute("INSERT OR REPLACE INTO budgets VALUES (?, ?, ?)", (dataset, epsilon, delta))
            conn.commit()

    def job_charge(self, job_id: str) -> tuple[float, float] | None:
        """(epsilon, delta) charged for ``job_id`` so far, all its charges composed (``None`` before
        its first release)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, event_json, epsilon, delta FROM charges WHERE job_id = ? ORDER BY id", (job_id,)
            ).fetchall()
        if len(rows) <= 1:
            return None if not rows else (float(rows[0][2]), float(rows[0][3]))
        try:
            events = [event_from_json(text) for _, text, _, _ in rows]
        except PrivacyError as err:
            raise self._fail(f"a charge of job {job_id!r} has an unreadable event", err) from err
        delta = float(rows[0][3])
        return epsilon(events, delta=delta, accountant=self.accountant), delta

    def running_totals(self) -> tuple[RunningTotal, ...]:
        """After each charge, in order: its dataset's spending (every charge so far composed, at the
        budget's delta, as ``spent``) and its job's charge so far (as ``job_charge``). The last of a
        dataset is its ``spent``, the last of a job its ``job_charge``: the figures a run reports."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, job_id, dataset, event_json, epsilon, delta FROM charges ORDER BY id"
            ).fetchall()
            deltas = {d: self._budget(conn, d)[1] for d in {row[2] for row in rows}}
        datasets: dict[str, list[DpEvent]] = {}
        jobs: dict[str, tuple[float, list[DpEvent]]] = {}
        out = []
        for charge_id, job_id, dataset, text, alone, delta in rows:
            try:
                event = event_from_json(text)
            except PrivacyError as err:
                raise self._fail(f"charge id {charge_id} has an unreadable event", err) from err
            datasets.setdefault(dataset, []).append(event)
            job_delta, job = jobs.setdefault(job_id, (float(delta), []))
            job.append(event)
            acc = self.accountant
            composed = epsilon(datasets[dataset], delta=deltas[dataset], accountant=acc)
            mine = float(alone) if len(job) == 1 else epsilon(job, delta=job_delta, accountant=acc)
            out.append(RunningTotal(int(charge_id), composed, mine))
        return tuple(out)

    # --- the audit log's anchor -----------------------------------------------------------------

    def audit_head(self) -> tuple[int, str]:
        """The audit log's head last recorded here: (0, "") before the first record."""
        with self._connect() as conn:
            text = self._meta(conn).get("audit_head", "0 ")
        seq, _, digest = text.partition(" ")
        return int(seq), digest

    def set_audit_head(self, seq: int, digest: str) -> None:
        """Advance the anchor to the audit log's new head (never moves back)."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            self._anchor(conn, seq, digest)
            conn.commit()

    def _anchor(self, conn: sqlite3.Connection, seq: int, digest: str) -> None:
        """``set_audit_head`` inside the caller's open transaction."""
        current = int(self._meta(conn).get("audit_head", "0 ").partition(" ")[0])
        if seq > current:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('audit_head', ?)", (f"{seq} {digest}",))

    # --- reporting ----------------------------------------------------------------------------

    def summary(self) -> LedgerSummary:
        """Budget, spent and remaining per dataset, and every charge (for ``fedcore ledger``)."""
        with self._connect() as conn:
            datasets = [r[0] for r in conn.execute("SELECT dataset FROM budgets ORDER BY dataset")]
            rows = conn.execute(
                "SELECT id, time, job_id, dataset, event_json, epsilon, delta, accountant "
                "FROM charges ORDER BY id"
            ).fetchall()
            out = []
            for name in datasets:
                budget_eps, spent, delta = self._spent(conn, name)
                n = conn.execute("SELECT COUNT(*) FROM charges WHERE dataset = ?", (name,))
                left = max(0.0, budget_eps - spent)
                out.append(DatasetSummary(name, budget_eps, delta, spent, left, n.fetchone()[0]))
        charges = tuple(ChargeRecord(*row) for row in rows)
        return LedgerSummary(self.site, str(self.path), tuple(out), charges, self.audit_head())

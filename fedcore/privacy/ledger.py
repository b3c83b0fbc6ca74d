"""The per-site privacy ledger: one SQLite file, budgets per dataset, one row per charge.

Spending is the epsilon of *all stored events composed* by a ``dp_accounting`` accountant (PLD by
default) at the budget's delta, never a sum of per-charge epsilons. ``charge`` checks and inserts
in one ``BEGIN IMMEDIATE`` transaction, so concurrent processes never overspend. An unreadable
file fails closed with ``LedgerError``; it is never treated as empty.
"""

from __future__ import annotations

import math
import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

from dp_accounting.dp_event import ComposedDpEvent, DpEvent

from fedcore.errors import BudgetExceededError, LedgerError, PolicyError, PrivacyError
from fedcore.privacy.accounting import AccountantName, epsilon, event_from_json, event_to_json

__all__ = ["ChargeRecord", "DatasetSummary", "Decision", "LedgerSummary", "PrivacyLedger"]

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE budgets (dataset TEXT PRIMARY KEY, epsilon REAL NOT NULL, delta REAL NOT NULL);
CREATE TABLE charges (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL,
    job_id TEXT NOT NULL, dataset TEXT NOT NULL, event_json TEXT NOT NULL,
    epsilon REAL NOT NULL, delta REAL NOT NULL, accountant TEXT NOT NULL);
CREATE TRIGGER charges_no_update BEFORE UPDATE ON charges
    BEGIN SELECT RAISE(ABORT, 'ledger charges are append-only'); END;
CREATE TRIGGER charges_no_delete BEFORE DELETE ON charges
    BEGIN SELECT RAISE(ABORT, 'ledger charges are append-only'); END;
"""
_COLUMNS = {
    "meta": ["key", "value"],
    "budgets": ["dataset", "epsilon", "delta"],
    "charges": ["id", "time", "job_id", "dataset", "event_json", "epsilon", "delta", "accountant"],
}


def _atomic_create(path: Path, schema: str, meta: dict[str, str]) -> None:
    """Build ``schema`` (+ a ``meta`` table's rows) in a temp file, then hard-link it to ``path``.

    The link fails if ``path`` exists, so two processes creating it at once cannot clobber each
    other, and a half-written file is never visible under ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        conn = sqlite3.connect(tmp)
        with conn:
            conn.executescript(schema)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
        conn.close()
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process created it first; the caller validates it
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Decision:
    """Whether planned events fit a dataset's budget (all epsilons at the budget's ``delta``)."""

    allowed: bool
    dataset: str
    requested_epsilon: float
    spent_epsilon: float
    projected_epsilon: float
    budget_epsilon: float
    delta: float
    reason: str

    @property
    def remaining_epsilon(self) -> float:
        """Budget left before the planned work."""
        return max(0.0, self.budget_epsilon - self.spent_epsilon)


@dataclass(frozen=True)
class ChargeRecord:
    """One accepted charge; ``epsilon`` is this charge alone at ``delta`` (for reports)."""

    id: int
    time: str
    job_id: str
    dataset: str
    event_json: str
    epsilon: float
    delta: float
    accountant: str


@dataclass(frozen=True)
class DatasetSummary:
    """Budget and spending of one dataset."""

    dataset: str
    budget_epsilon: float
    delta: float
    spent_epsilon: float
    remaining_epsilon: float
    num_charges: int


@dataclass(frozen=True)
class LedgerSummary:
    """What ``fedcore ledger SITE`` prints."""

    site: str
    path: str
    datasets: tuple[DatasetSummary, ...]
    charges: tuple[ChargeRecord, ...]


class PrivacyLedger:
    """A site's privacy ledger in the SQLite file ``path``, created on first use.

    Parameters
    ----------
    path
        The ledger file; created (with its parent folders) if it does not exist.
    site
        The site's name; opening another site's ledger raises ``LedgerError``.
    accountant
        ``"pld"`` (default) or ``"rdp"``: how stored events are composed.
    busy_timeout_s
        How long to wait for another process holding the write lock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        site: str,
        accountant: AccountantName = "pld",
        busy_timeout_s: float = 60.0,
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
        self._timeout = busy_timeout_s
        if not self.path.exists():
            _atomic_create(self.path, _SCHEMA, {"site": site, "schema_version": SCHEMA_VERSION})
        self._validate()

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
        try:
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        except sqlite3.Error as err:
            raise self._fail("cannot open", err) from err
        try:
            yield conn
        except sqlite3.DatabaseError as err:
            if conn.in_transaction:
                conn.rollback()
            raise self._fail("database error", err) from err
        finally:
            conn.close()

    def _validate(self) -> None:
        with self._connect() as conn:
            if conn.execute("PRAGMA quick_check").fetchone() != ("ok",):
                raise self._fail("SQLite integrity check failed")
            for table, columns in _COLUMNS.items():
                found = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
                if found != columns:
                    raise self._fail(f"table {table!r} has columns {found}, expected {columns}")
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise self._fail(f"schema version {meta.get('schema_version')!r} != {SCHEMA_VERSION}")
        if meta.get("site") != self.site:
            raise LedgerError(
                f"ledger {self.path} belongs to site {meta.get('site')!r}, not {self.site!r}; "
                "point the site's ledger path at its own file"
            )

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
        """Would ``planned_events`` fit? Reads only; ``charge`` re-checks atomically."""
        with self._connect() as conn:
            budget = self._budget(conn, dataset)
            stored = self._events(conn, dataset)
        return self._decide(dataset, budget, stored, list(planned_events))

    # --- writing ------------------------------------------------------------------------------

    def charge(self, dataset: str, job_id: str, events: Sequence[DpEvent]) -> ChargeRecord:
        """Check and record ``events`` for ``job_id`` in one transaction.

        Raises ``BudgetExceededError`` (nothing recorded) when the composed total would exceed
        the budget; the message says what was asked and what is left.
        """
        planned = list(events)
        if not planned:
            raise PrivacyError(f"charge for job {job_id!r} on {dataset!r} has no events")
        text = event_to_json(planned[0] if len(planned) == 1 else ComposedDpEvent(planned))
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            decision = self._decide(
                dataset, self._budget(conn, dataset), self._events(conn, dataset), planned
            )
            if not decision.allowed:
                conn.rollback()
                raise BudgetExceededError(
                    f"job {job_id!r} refused, nothing was run: {decision.reason}. Reduce rounds "
                    "or steps, raise the noise, or raise the budget explicitly in site.toml"
                )
            row = (
                datetime.now(UTC).isoformat(), job_id, dataset, text,
                decision.requested_epsilon, decision.delta, self.accountant,
            )  # fmt: skip
            cur = conn.execute(
                "INSERT INTO charges (time, job_id, dataset, event_json, epsilon, delta, "
                "accountant) VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            conn.commit()
        return ChargeRecord(int(cur.lastrowid or 0), *row)

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
            conn.execute("BEGIN IMMEDIATE")
            old = conn.execute("SELECT epsilon, delta FROM budgets WHERE dataset = ?", (dataset,)).fetchone()
            if old is not None and (epsilon > old[0] or delta > old[1]) and not allow_increase:
                conn.rollback()
                raise PolicyError(
                    f"dataset {dataset!r} budget would rise from (epsilon={old[0]}, "
                    f"delta={old[1]}) to (epsilon={epsilon}, delta={delta}); raising a budget "
                    "must be explicit: pass allow_increase=True (fedcore ledger --raise-budget)"
                )
            conn.execute("INSERT OR REPLACE INTO budgets VALUES (?, ?, ?)", (dataset, epsilon, delta))
            conn.commit()

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
        return LedgerSummary(self.site, str(self.path), tuple(out), charges)

"""Job plans in a site's ledger file: two-phase admission, releases, values released once.

``reserve`` records an admitted job's plan (bound to the digest of its settings) and holds its cost
against the budget until it expires; ``release`` records each answer the site gives for the job and
charges it, in one transaction with the check: a training plan charges each answer's own events (one
round of its mechanisms, so a site sampled in fewer rounds than planned pays only those; the plan's
limits are upper bounds, and the rounds not answered stay held until the job ends), other plans are
charged whole at the first answer; ``cancel`` ends a job: a reservation that released nothing is
dropped, a job charged per answer keeps its charges and stops holding its unanswered rounds. A value
the site releases once and reuses (its noisy training-set size) is kept here and charged once, at the
first release of a plan that uses it.
The tables live in the ledger's file (``fedcore.site.ledger``), which is the authority on charges.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dp_accounting.dp_event import DpEvent

from fedcore.errors import BudgetExceededError, PolicyError, PrivacyError
from fedcore.privacy.accounting import event_from_json, event_to_json
from fedcore.site.ledger import PrivacyLedger
from fedcore.site.records import ChargeRecord, ReleaseKind, events_json, now_iso

__all__ = ["PlanBook", "PlanRecord"]


@dataclass(frozen=True)
class PlanRecord:
    """An admitted job's plan as the ledger keeps it, and what it has released so far."""

    job_id: str
    digest: str
    dataset: str
    status: str
    events: tuple[DpEvent, ...]
    limits: Mapping[str, int]
    summary: Mapping[str, Any]
    released: Mapping[str, int]
    created: str = ""  # when it was admitted (ISO 8601, UTC)
    expires: float = 0.0  # when its reservation lapses (seconds since the epoch)


class PlanBook:
    """The job plans of one site's ledger."""

    def __init__(self, ledger: PrivacyLedger) -> None:
        self.ledger = ledger

    def _plan(self, conn: sqlite3.Connection, job_id: str) -> PlanRecord | None:
        row = conn.execute(
            "SELECT digest, dataset, status, events_json, limits_json, summary_json, created, expires "
            "FROM plans WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        digest, dataset, status, events_json, limits_json, summary_json, created, expires = row
        counts = dict(
            conn.execute("SELECT kind, COUNT(*) FROM releases WHERE job_id = ? GROUP BY kind", (job_id,))
        )
        try:
            events = (event_from_json(events_json),) if events_json else ()
            limits, summary = json.loads(limits_json), json.loads(summary_json)
        except (PrivacyError, ValueError) as err:
            raise self.ledger._fail(f"plan {job_id!r} is unreadable", err) from err
        return PlanRecord(
            job_id, digest, dataset, status, events, limits, summary, counts, str(created), float(expires)
        )

    def plan(self, job_id: str) -> PlanRecord | None:
        """The plan admitted under ``job_id`` (``None`` if none)."""
        with self.ledger._connect() as conn:
            return self._plan(conn, job_id)

    def reserve(
        self,
        dataset: str,
        job_id: str,
        *,
        digest: str,
        events: Sequence[DpEvent],
        limits: Mapping[str, int],
        summary: Mapping[str, Any],
        hold_seconds: float,
    ) -> PlanRecord:
        """Admit a job: keep its plan and hold its cost (``events``) against the budget.

        Idempotent for the same ``job_id`` and ``digest``. Raises ``PolicyError`` when ``job_id`` is
        known with another digest, ``BudgetExceededError`` when the plan does not fit (charges and
        other live reservations counted). Nothing is charged until the first ``release``.
        """
        with self.ledger._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            old = self._plan(conn, job_id)
            if old is not None:
                if old.digest != digest:
                    raise PolicyError(
                        f"job id {job_id!r} was admitted with other settings (digest {old.digest[:12]}, "
                        f"now {digest[:12]}); a job id names one job: submit the changed job under a new id"
                    )
                return old
            planned = list(events)
            with_values = planned + self._value_events(conn, dataset, summary.get("values", ()))
            if with_values:
                decision = self.ledger._decide(
                    dataset,
                    self.ledger._budget(conn, dataset),
                    self.ledger._events(conn, dataset) + self.ledger._reserved(conn, dataset, besides=job_id),
                    with_values,
                )
                if not decision.allowed:
                    raise BudgetExceededError(
                        f"job {job_id!r} refused, nothing was run: {decision.reason}. Reduce rounds "
                        "or steps, raise the noise, or raise the budget explicitly in site.toml"
                    )
            conn.execute(
                "INSERT INTO plans VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'reserved')",
                (
                    job_id, digest, dataset, now_iso(), time.time() + hold_seconds, events_json(planned),
                    json.dumps(dict(limits), sort_keys=True), json.dumps(summary, sort_keys=True),
                ),
            )  # fmt: skip
            rec = self._plan(conn, job_id)
            conn.commit()
        assert rec is not None
        return rec

    def release(
        self,
        job_id: str,
        *,
        digest: str,
        kind: ReleaseKind,
        round: int,
        audit: Callable[[ChargeRecord | None], tuple[int, str]] | None = None,
    ) -> tuple[PlanRecord, ChargeRecord | None]:
        """Record one answer of ``kind`` for ``round``, charging the plan at its first release.

        Refused (``PolicyError``, nothing recorded) for an unknown or cancelled job, another digest,
        a round outside ``1..limit`` or already answered, or more answers than the plan allows.
        Returns the plan after the release and the charge made now (``None`` after the first).

        ``audit(charge)``, when given, writes the release's audit record (its own committed
        transaction in the audit log) and returns the log's new head, which is anchored in this same
        ledger transaction: one ledger commit per answer instead of two. The ledger's write lock is
        held meanwhile (lock order ledger -> audit; nothing takes them the other way). If the site
        stops after the audit commit and before the ledger's, nothing was charged, released or sent:
        the audit log then holds one release line too many (an overstatement, never a lost charge),
        and the anchor is one record behind its head, which ``SiteGuard`` accepts.
        """
        with self.ledger._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            plan = self._plan(conn, job_id)
            who = f"site {self.ledger.site!r} refuses {kind} round {round} of job {job_id!r}"
            why = _release_refusal(plan, digest, kind, round)
            if why:
                raise PolicyError(f"{who}: {why}")
            assert plan is not None
            if conn.execute(
                "SELECT 1 FROM releases WHERE job_id = ? AND kind = ? AND round = ?", (job_id, kind, round)
            ).fetchone():
                raise PolicyError(
                    f"{who}: that round was answered already (a second answer would be a second "
                    "release the plan did not charge)"
                )
            charge, events = None, []
            charging = plan.summary.get("charging")  # None: the whole plan is charged at the first answer
            if plan.status == "reserved":
                keys = plan.summary.get("values", ())
                first = list(plan.events) if charging is None else self._charging(charging, "upfront")
                events = first + self._value_events(conn, plan.dataset, keys)
                conn.execute("UPDATE plans SET status = 'released' WHERE job_id = ?", (job_id,))
                for key in keys:
                    conn.execute(
                        "UPDATE released_values SET charged = 1 WHERE dataset = ? AND key = ?",
                        (plan.dataset, key),
                    )
            if charging is not None:  # this answer's own events: a round the site is not asked costs nothing
                events += self._charging(charging, kind)
            if events:
                charge = self.ledger._insert_charge(conn, plan.dataset, job_id, events, besides=job_id)
            conn.execute("INSERT INTO releases (job_id, kind, round, time) VALUES (?, ?, ?, ?)",
                         (job_id, kind, round, now_iso()))  # fmt: skip
            if audit is not None:
                self.ledger._anchor(conn, *audit(charge))
            after = self._plan(conn, job_id)
            conn.commit()
        assert after is not None
        return after, charge

    def _charging(self, charging: Mapping[str, str], kind: str) -> list[DpEvent]:
        text = charging.get(kind, "")
        try:
            return [event_from_json(text)] if text else []
        except PrivacyError as err:
            raise self.ledger._fail(f"the charging of {kind!r} answers is unreadable", err) from err

    def confirm(self, job_id: str, *, digest: str, kind: ReleaseKind, round: int, claim: str) -> bool:
        """Record that this site confirms the sum ``claim`` (a ``SumClaim`` digest) of ``kind``
        answers of ``round``: its one sum for that round (``fedcore.site.sums``). True when recorded
        now, False when this very claim was confirmed before (a repeat). Refused (``PolicyError``)
        when the job is unknown, cancelled or under another digest, when the site gave no such answer,
        or when it confirmed another claim for that round."""
        with self.ledger._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            plan = self._plan(conn, job_id)
            who = f"site {self.ledger.site!r} does not confirm the {kind} sum of round {round} of {job_id!r}"
            if plan is None or plan.digest != digest or plan.status == "cancelled":
                raise PolicyError(f"{who}: the job is not admitted under these settings, or was cancelled")
            if not conn.execute(
                "SELECT 1 FROM releases WHERE job_id = ? AND kind = ? AND round = ?", (job_id, kind, round)
            ).fetchone():
                raise PolicyError(f"{who}: it gave no {kind} answer for that round")
            row = conn.execute(
                "SELECT claim FROM confirmations WHERE job_id = ? AND kind = ? AND round = ?",
                (job_id, kind, round),
            ).fetchone()
            if row is not None:
                if row[0] != claim:
                    raise PolicyError(
                        f"{who}: it confirmed another sum for that round (claim {str(row[0])[:12]}), and "
                        "its answer may be opened in one sum only"
                    )
                return False
            conn.execute(
                "INSERT INTO confirmations VALUES (?, ?, ?, ?, ?)", (job_id, kind, round, claim, now_iso())
            )
            conn.commit()
        return True

    def job_ids(self) -> list[str]:
        """Every job admitted here, oldest first (for reports; refused jobs are in the audit log)."""
        with self.ledger._connect() as conn:
            return [str(r[0]) for r in conn.execute("SELECT job_id FROM plans ORDER BY created, job_id")]

    def releases(self, job_id: str) -> list[tuple[str, int, str]]:
        """(kind, round, time) of every answer recorded for ``job_id``, in the order given."""
        with self.ledger._connect() as conn:
            sql = "SELECT kind, round, time FROM releases WHERE job_id = ? ORDER BY id"
            rows = conn.execute(sql, (job_id,))
            return [(str(k), int(r), str(t)) for k, r, t in rows]

    def answered(self, job_id: str, kind: ReleaseKind, round: int) -> bool:
        """Whether a release of ``kind`` for ``round`` of ``job_id`` is recorded."""
        with self.ledger._connect() as conn:
            sql = "SELECT 1 FROM releases WHERE job_id = ? AND kind = ? AND round = ?"
            return conn.execute(sql, (job_id, kind, round)).fetchone() is not None

    def cancel(self, job_id: str) -> str | None:
        """End a job: no further answer is given for it. A reservation that released nothing is
        dropped (nothing charged); a job charged per answer keeps its charges and frees the budget its
        unanswered rounds held. Returns the job's status after."""
        with self.ledger._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE plans SET status = 'cancelled' WHERE job_id = ? "
                "AND status IN ('reserved', 'released')",
                (job_id,),
            )
            row = conn.execute("SELECT status FROM plans WHERE job_id = ?", (job_id,)).fetchone()
            conn.commit()
        return None if row is None else str(row[0])

    def _value_events(self, conn: sqlite3.Connection, dataset: str, keys: Sequence[str]) -> list[DpEvent]:
        """Events of the values ``keys`` that no release has charged yet (each is charged once)."""
        out = []
        for key in keys:
            row = conn.execute(
                "SELECT event_json FROM released_values WHERE dataset = ? AND key = ? AND charged = 0",
                (dataset, key),
            ).fetchone()
            if row is not None:
                try:
                    out.append(event_from_json(row[0]))
                except PrivacyError as err:
                    raise self.ledger._fail(f"released value {key!r} is unreadable", err) from err
        return out

    def released_value(self, dataset: str, key: str) -> tuple[float, DpEvent, bool] | None:
        """(value, its event, whether a release charged it) of a value the site keeps releasing."""
        with self.ledger._connect() as conn:
            row = conn.execute(
                "SELECT value, event_json, charged FROM released_values WHERE dataset = ? AND key = ?",
                (dataset, key),
            ).fetchone()
        if row is None:
            return None
        try:
            return float(row[0]), event_from_json(row[1]), bool(row[2])
        except PrivacyError as err:
            raise self.ledger._fail(f"released value {key!r} is unreadable", err) from err

    def keep_value(self, dataset: str, key: str, value: float, event: DpEvent) -> tuple[float, DpEvent, bool]:
        """Store a freshly drawn noisy value (first writer wins); returns what is stored."""
        with self.ledger._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR IGNORE INTO released_values VALUES (?, ?, ?, ?, 0)",
                (dataset, key, value, event_to_json(event)),
            )
            conn.commit()
        kept = self.released_value(dataset, key)
        assert kept is not None
        return kept


def _release_refusal(plan: PlanRecord | None, digest: str, kind: str, round: int) -> str:
    """Why a release is outside the plan ("" when it is inside)."""
    if plan is None:
        return "the job was not admitted (the coordinator must ask for admission before round 1)"
    if plan.digest != digest:
        return (
            f"its settings differ from the admitted ones (digest {digest[:12]} vs {plan.digest[:12]}); "
            "a changed job needs a new job id and a new admission"
        )
    if plan.status == "cancelled":
        return "the job was cancelled"
    limit = int(plan.limits.get(kind, 0))
    if not 1 <= round <= limit:
        return f"the plan allows {kind} rounds 1..{limit} only"
    if plan.released.get(kind, 0) >= limit:
        return f"the plan's {limit} {kind} answers were all given"
    return ""

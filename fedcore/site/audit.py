"""The site's append-only, hash-chained audit log (one SQLite file next to the ledger).

Why SQLite rather than JSONL: appends are transactions (``BEGIN IMMEDIATE``), so two processes
never interleave half-written lines or fork the chain, a crash never leaves a torn record, and
the head (last seq and hash) is updated in the same transaction as the record it points to.

Each record's ``hash`` is SHA-256 over the canonical JSON (sorted keys, no whitespace) of all
its other fields, ``prev_hash`` included, so editing, removing or reordering any record breaks
the chain at that seq. Removing the *last* records is caught by the ``head`` row, and by the
``expected_head`` a caller kept elsewhere.

Anchors: the site's ledger keeps the head after every append (``PrivacyLedger.audit_head``), so
truncating or replacing this file alone is detected; ``fedcore ledger`` prints the head and every
reply to the coordinator carries it, so a head kept outside the site (``verify(expected_head=...)``,
``fedcore audit verify --head SEQ:HASH``) detects a rewrite of both files. Stated honestly: someone
who can write both files and no copy of the head was kept elsewhere can rewrite history.

The log is never created implicitly: ``AuditLog.create`` is an explicit step (``fedcore ledger SITE --init``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

from fedcore.errors import AuditError
from fedcore.site.db import atomic_create, connect

__all__ = ["GENESIS_HASH", "AuditKind", "AuditLog", "AuditRecord", "VerifyReport"]

AuditKind = Literal[
    "job", "query", "budget", "admit", "refuse", "release", "replay", "cancel", "confirm", "restore",
    "request", "approve", "deny", "expire",
]  # fmt: skip
GENESIS_HASH = "0" * 64
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE records (seq INTEGER PRIMARY KEY, time TEXT NOT NULL, actor TEXT NOT NULL,
    kind TEXT NOT NULL, job_id TEXT NOT NULL, released TEXT NOT NULL, epsilon REAL NOT NULL,
    delta REAL NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
INSERT INTO head VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
CREATE TRIGGER records_no_update BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER records_no_delete BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
"""
_FIELDS = "seq, time, actor, kind, job_id, released, epsilon, delta, prev_hash, hash"


@dataclass(frozen=True)
class AuditRecord:
    """One released job or query: who asked, what was released, what it cost."""

    seq: int
    time: str
    actor: str
    kind: str
    job_id: str
    released: str
    epsilon: float
    delta: float
    prev_hash: str
    hash: str

    def expected_hash(self) -> str:
        """SHA-256 of the canonical JSON of every field but ``hash``."""
        body = {k: v for k, v in asdict(self).items() if k != "hash"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class VerifyReport:
    """The result of ``AuditLog.verify``: ``ok``, or the first seq where the chain breaks."""

    ok: bool
    num_records: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None
    problems: tuple[str, ...]


class AuditLog:
    """The append-only audit log in the SQLite file ``path`` (create it with ``AuditLog.create``)."""

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_s: float = 60.0, read_only: bool = False
    ) -> None:
        """Open the log at ``path``; ``read_only``: a reader beside a running node (never writes)."""
        self.path = Path(path)
        self._timeout, self.read_only = busy_timeout_s, read_only
        if not self.path.exists():
            raise AuditError(
                f"no audit log at {self.path}: fedcore fails closed. On a new site create it with "
                "`fedcore ledger SITE_FILE --init`; else restore it from a backup"
            )
        with self._connect() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("kind") != "fedcore-audit":
            raise self._fail(f"not a fedcore audit log (meta {meta})")

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> AuditLog:
        """Create a new, empty log (0600, in a 0700 folder); refuses to replace an existing one."""
        path = Path(path)
        if not atomic_create(path, _SCHEMA, {"kind": "fedcore-audit", "schema_version": "1"}):
            raise AuditError(f"an audit log already exists at {path}; it is never replaced")
        return cls(path)

    def _fail(self, what: str, err: BaseException | None = None) -> AuditError:
        cause = f" ({err})" if err else ""
        return AuditError(
            f"audit log {self.path} is unreadable or broken: {what}{cause}. fedcore fails closed: "
            "restore the file from a backup and run `fedcore audit verify SITE`"
        )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with connect(self.path, timeout=self._timeout, fail=self._fail, read_only=self.read_only) as conn:
            yield conn

    def append(
        self,
        *,
        actor: str,
        kind: AuditKind,
        job_id: str,
        released: str,
        epsilon: float,
        delta: float,
    ) -> AuditRecord:
        """Append one record and move the head; refuses to extend a chain whose tail is broken."""
        problems = []
        if kind not in get_args(AuditKind):
            problems.append(f"kind must be one of {', '.join(get_args(AuditKind))}, got {kind!r}")
        if not (math.isfinite(epsilon) and epsilon >= 0 and 0 <= delta < 1):
            problems.append(f"cost must be finite, epsilon >= 0, delta in [0, 1): {epsilon, delta}")
        if problems:
            raise AuditError("; ".join(problems))
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            head_seq, head_hash = conn.execute("SELECT seq, hash FROM head").fetchone()
            tail = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1")
            if (tail.fetchone() or (0, GENESIS_HASH)) != (head_seq, head_hash):
                raise self._fail(f"the last record does not match the head (seq {head_seq})")
            record = AuditRecord(
                head_seq + 1, datetime.now(UTC).isoformat(), actor, kind, job_id, released,
                float(epsilon), float(delta), head_hash, "",
            )  # fmt: skip
            record = AuditRecord(**{**asdict(record), "hash": record.expected_hash()})
            conn.execute(f"INSERT INTO records ({_FIELDS}) VALUES ({', '.join('?' * 10)})",
                         tuple(asdict(record).values()))  # fmt: skip
            conn.execute("UPDATE head SET seq = ?, hash = ?", (record.seq, record.hash))
            conn.commit()
        return record

    def records(self) -> list[AuditRecord]:
        """All records in seq order (as stored; call ``verify`` to trust them)."""
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {_FIELDS} FROM records ORDER BY seq").fetchall()
        return [AuditRecord(*row) for row in rows]

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record; keep it outside the site to detect a full rewrite."""
        with self._connect() as conn:
            seq, digest = conn.execute("SELECT seq, hash FROM head").fetchone()
        return int(seq), str(digest)

    def _snapshot(self) -> tuple[list[AuditRecord], tuple[int, str]]:
        """Records and head read in one transaction: a writer appending meanwhile (a running node,
        beside a console or ``fedcore audit verify``) is seen entirely or not at all."""
        with self._connect() as conn:
            conn.execute("BEGIN")
            rows = conn.execute(f"SELECT {_FIELDS} FROM records ORDER BY seq").fetchall()
            seq, digest = conn.execute("SELECT seq, hash FROM head").fetchone()
            conn.commit()
        return [AuditRecord(*row) for row in rows], (int(seq), str(digest))

    def verify(self, *, expected_head: tuple[int, str] | None = None) -> VerifyReport:
        """Walk the chain; report the first seq that was edited, removed or reordered."""
        records, (head_seq, head_hash) = self._snapshot()
        problems: list[tuple[int, str]] = []
        prev = GENESIS_HASH
        for i, rec in enumerate(records, start=1):
            problems += _check_record(rec, i, prev)
            prev = rec.hash
        last = (records[-1].seq, records[-1].hash) if records else (0, GENESIS_HASH)
        if last != (head_seq, head_hash):
            problems.append((last[0] + 1, f"log ends at seq {last[0]} but head is {head_seq}"))
        if expected_head is not None and tuple(expected_head) != (head_seq, head_hash):
            seq = min(expected_head[0], head_seq) + 1
            problems.append((seq, f"head {head_seq} != externally kept head {expected_head[0]}"))
        first = min((seq for seq, _ in problems), default=None)
        text = tuple(msg for _, msg in problems)
        return VerifyReport(not problems, len(records), head_seq, head_hash, first, text)


def _check_record(rec: AuditRecord, position: int, prev: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    if rec.seq != position:
        out.append((position, f"record at position {position} has seq {rec.seq} (removed?)"))
    if rec.prev_hash != prev:
        out.append((position, f"seq {rec.seq}: prev_hash does not match the previous record"))
    try:
        if rec.hash != rec.expected_hash():
            out.append((position, f"seq {rec.seq}: hash mismatch (record edited)"))
    except (TypeError, ValueError) as err:
        out.append((position, f"seq {rec.seq}: record cannot be hashed ({err})"))
    return out

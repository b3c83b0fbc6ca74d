"""The hash-chained audit log detects edited, removed and reordered records."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from fedcore.errors import AuditError
from fedcore.site.audit import GENESIS_HASH, AuditLog


def _log(tmp_path: Path, n: int = 5) -> AuditLog:
    log = AuditLog.create(tmp_path / "site-a" / "audit.sqlite")
    for i in range(1, n + 1):
        log.append(
            actor=f"scientist-{i % 2}",
            kind="job" if i % 2 else "query",
            job_id=f"job-{i}",
            released=f"round {i} model update",
            epsilon=0.1 * i,
            delta=1e-6,
        )
    return log


def _tamper(log: AuditLog, *sql: str) -> None:
    conn = sqlite3.connect(log.path)
    with conn:
        conn.execute("DROP TRIGGER IF EXISTS records_no_update")
        conn.execute("DROP TRIGGER IF EXISTS records_no_delete")
        for statement in sql:
            conn.execute(statement)
    conn.close()


def test_intact_chain_verifies(tmp_path: Path) -> None:
    log = _log(tmp_path)
    report = log.verify()
    assert report.ok and report.num_records == 5 and report.first_bad_seq is None
    records = log.records()
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    assert log.head() == (5, records[-1].hash)
    assert log.verify(expected_head=log.head()).ok


def test_empty_log_verifies_and_is_never_created_implicitly(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"no audit log .* fails closed"):
        AuditLog(tmp_path / "audit.sqlite")
    report = AuditLog.create(tmp_path / "audit.sqlite").verify()
    assert report.ok and report.num_records == 0
    assert (tmp_path / "audit.sqlite").stat().st_mode & 0o777 == 0o600
    with pytest.raises(AuditError, match="never replaced"):
        AuditLog.create(tmp_path / "audit.sqlite")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE records SET epsilon = 0.0 WHERE seq = 3",
        "UPDATE records SET actor = 'someone-else' WHERE seq = 3",
        "UPDATE records SET released = 'nothing' WHERE seq = 3",
        "UPDATE records SET epsilon = '0.3' WHERE seq = 3",
    ],
)
def test_edited_field_detected(tmp_path: Path, statement: str) -> None:
    log = _log(tmp_path)
    _tamper(log, statement)
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 3
    assert any("seq 3: hash mismatch" in p for p in report.problems)


def test_deleted_middle_record_detected(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _tamper(log, "DELETE FROM records WHERE seq = 2")
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 2
    assert report.num_records == 4


def test_swapped_records_detected(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _tamper(
        log,
        "UPDATE records SET seq = -1 WHERE seq = 2",
        "UPDATE records SET seq = 2 WHERE seq = 4",
        "UPDATE records SET seq = 4 WHERE seq = -1",
    )
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 2


def test_swapped_contents_detected(tmp_path: Path) -> None:
    log = _log(tmp_path)
    cols = "time, actor, kind, job_id, released, epsilon, delta, prev_hash, hash"
    _tamper(
        log,
        f"CREATE TABLE tmp AS SELECT seq, {cols} FROM records WHERE seq IN (2, 3)",
        "DELETE FROM records WHERE seq IN (2, 3)",
        f"INSERT INTO records SELECT 5 - seq, {cols} FROM tmp",
    )
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 2


def test_deleted_last_record_detected_by_head(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _tamper(log, "DELETE FROM records WHERE seq = 5")
    report = log.verify()
    assert not report.ok and report.first_bad_seq == 5
    assert "log ends at seq 4 but head is 5" in report.problems[0]
    with pytest.raises(AuditError, match="does not match the head"):
        log.append(actor="x", kind="job", job_id="j", released="r", epsilon=0.1, delta=0.0)


def test_full_rewrite_detected_only_by_external_head(tmp_path: Path) -> None:
    log = _log(tmp_path)
    kept = log.head()
    _tamper(log, "DELETE FROM records WHERE seq = 5")
    records = log.records()
    _tamper(log, f"UPDATE head SET seq = 4, hash = '{records[-1].hash}'")
    assert log.verify().ok  # the documented limit
    report = log.verify(expected_head=kept)
    assert not report.ok and report.first_bad_seq == 5


def test_append_validates_and_is_append_only(tmp_path: Path) -> None:
    log = _log(tmp_path, n=1)
    with pytest.raises(AuditError, match=r"kind must be one of job, query, budget.*cost"):
        log.append(actor="a", kind="other", job_id="j", released="r", epsilon=-1, delta=0.0)  # type: ignore[arg-type]
    conn = sqlite3.connect(log.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE records SET epsilon = 0")
    conn.close()


def test_garbage_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    path.write_bytes(b"\x00garbage" * 500)
    with pytest.raises(AuditError, match=r"audit.sqlite.*restore the file"):
        AuditLog(path)

"""SQLite file handling shared by the ledger and the audit log: private files, atomic creation.

A site's state files hold its privacy history: they are created 0600 in a 0700 folder, built in a
temporary file and hard-linked into place (so two processes creating one at once never clobber each
other and a half-written file is never visible), and never created implicitly by a reader.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_create", "connect", "private_dir"]


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing; a folder fedcore creates is 0700."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)


def atomic_create(path: Path, schema: str, meta: dict[str, str]) -> bool:
    """Build ``schema`` (+ a ``meta`` table's rows) in a 0600 temp file, then hard-link it to ``path``.

    Returns ``False`` (and leaves the existing file alone) if ``path`` already exists.
    """
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(tmp)
        conn.execute("PRAGMA journal_mode=WAL")  # one fsync per commit; durable with synchronous=FULL
        with conn:
            conn.executescript(schema)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        os.chmod(tmp, 0o600)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def connect(
    path: Path, *, timeout: float, fail: Callable[[str, BaseException | None], Exception]
) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode (callers ``BEGIN IMMEDIATE``); errors become ``fail(...)``.

    Never creates ``path``: a missing file is an error (``mode=rw``).
    """
    try:
        uri = f"{Path(path).resolve().as_uri()}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as err:
        raise fail("cannot open", err) from err
    try:
        yield conn
    except sqlite3.DatabaseError as err:
        if conn.in_transaction:
            conn.rollback()
        raise fail("database error", err) from err
    finally:
        if conn.in_transaction:
            conn.rollback()
        conn.close()

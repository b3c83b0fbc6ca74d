"""SQLite file handling shared by the ledger and the audit log: private files, atomic creation.

A site's state files hold its privacy history: they are created 0600 in a 0700 folder, built in a
temporary file and hard-linked into place (so two processes creating one at once never clobber each
other and a half-written file is never visible), and never created implicitly by a reader.
"""

from __future__ import annotations

import functools
import os
import secrets
import sqlite3
import threading
from collections import OrderedDict
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


def _open_max() -> int:
    """How many connections a process keeps open: every file a worker serves, as far as its file
    descriptor limit allows (a WAL connection holds three: database, ``-wal``, ``-shm``).

    Too few is costly: a simulated worker serving 100 sites touches about 40 files per round (ledger
    and audit log of each sampled site), and each connection evicted and reopened costs a WAL
    checkpoint at close (measured ~10-20 ms, more than a release's own work).
    """
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 32
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(32, min(4096, soft // 8))


_OPEN_MAX = _open_max()
_OPEN: OrderedDict[tuple[str, int, int], tuple[sqlite3.Connection, tuple[int, ...]]] = OrderedDict()
"""Open connections of this process, per file and thread, least recently used first."""


def _file_id(path: Path) -> tuple[int, ...] | None:
    """Which file ``path`` is now (device, inode) and its last direct change (mtime, size)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _drop(key: tuple[str, int, int]) -> None:
    entry = _OPEN.pop(key, None)
    if entry is not None:
        entry[0].close()


def _open(
    path: Path, timeout: float, fail: Callable[[str, BaseException | None], Exception]
) -> sqlite3.Connection:
    """A connection reused across calls in this process and thread, while the file stays the same.

    Opening and closing cost more than a release's own work (closing the last connection to a WAL
    database checkpoints it). A file that is gone, replaced, or changed other than through SQLite's
    WAL (its main file's inode, mtime or size moved) gets a fresh connection; so does one after an error.
    """
    key = (str(path), os.getpid(), threading.get_ident())
    ident = _file_id(path)
    entry = _OPEN.get(key)
    if entry is not None and ident is not None and entry[1] == ident:
        _OPEN.move_to_end(key)
        return entry[0]
    _drop(key)
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=timeout, isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as err:
        raise fail("cannot open", err) from err
    _OPEN[key] = (conn, _file_id(path) or ())
    while len(_OPEN) > _OPEN_MAX:
        _drop(next(iter(_OPEN)))
    return conn


@functools.lru_cache(maxsize=4096)
def _resolved(path: str) -> Path:
    """``Path(path).resolve()`` of an absolute path, once per process (a site connects ~10 times a
    message; a symlink on the path changed meanwhile is not followed anew)."""
    return Path(path).resolve()


@contextmanager
def connect(
    path: Path,
    *,
    timeout: float,
    fail: Callable[[str, BaseException | None], Exception],
    read_only: bool = False,
) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode (callers ``BEGIN IMMEDIATE``); errors become ``fail(...)``.

    Never creates ``path``: a missing file is an error (``mode=rw``). Every commit is synchronous.
    ``read_only``: a fresh ``mode=ro`` connection, closed after the call (a reader such as the site's
    console): in WAL mode it never blocks a writer, and being read-only it never writes the file,
    its WAL, or checkpoints on close.
    """
    if read_only:
        with _read_only(path, timeout, fail) as conn:
            yield conn
        return
    text = str(path)
    resolved = _resolved(text) if os.path.isabs(text) else Path(text).resolve()  # cwd may change
    conn = _open(resolved, timeout, fail)
    try:
        yield conn
    except sqlite3.DatabaseError as err:
        if conn.in_transaction:
            conn.rollback()
        _drop((str(resolved), os.getpid(), threading.get_ident()))
        raise fail("database error", err) from err
    finally:
        if conn.in_transaction:
            conn.rollback()
        key = (str(resolved), os.getpid(), threading.get_ident())
        if key in _OPEN:  # the file's stamp after this call's own writes: they are not a change
            _OPEN[key] = (conn, _file_id(resolved) or ())


@contextmanager
def _read_only(
    path: Path, timeout: float, fail: Callable[[str, BaseException | None], Exception]
) -> Iterator[sqlite3.Connection]:
    try:
        conn = sqlite3.connect(
            f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=timeout, isolation_level=None
        )
    except sqlite3.Error as err:
        raise fail("cannot open", err) from err
    try:
        conn.execute("PRAGMA query_only=ON")
        yield conn
    except sqlite3.DatabaseError as err:
        raise fail("database error", err) from err
    finally:
        conn.close()

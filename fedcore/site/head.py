"""A copy of the site's audit head kept outside its state folder: a rolled-back folder is refused.

The ledger anchors the audit log's head, so truncating or replacing the log alone is detected. But
restoring a snapshot of the whole state folder (ledger, audit log, stored replies) restores a
consistent older state: spending drops back and rounds already answered would be answered again,
with fresh noise. So after every audit record the site also writes its head (seq, hash) and its
spending to a **head copy** in another place (``[node] head_copy`` in the site file, best on another
volume; by default ``.heads/<site>.head`` beside the site's folder under its state root), and checks
at every start that its audit log still holds the record the copy names. A log that ends before it,
or holds another record there, is a rolled-back or replaced folder: the site refuses to start,
naming both heads and the recovery.

Recovery (docs/privacy.md): restore the newest state folder; or, when that is lost, ``fedcore audit
accept-rollback SITE``, which charges the dataset, conservatively, the whole spending the copy
recorded (composed with the restored charges, the total is at least what was spent) and moves the
copy to the restored head. Someone who can rewrite both the folder and the copy is not stopped; the
copy's place is the operator's to choose where the folder's writers cannot reach.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fedcore.errors import AuditError

__all__ = ["HeadCopy", "read_head_copy", "write_head_copy"]


@dataclass(frozen=True)
class HeadCopy:
    """What the copy holds: the site, its audit head, and the epsilon spent per dataset at that head."""

    site: str
    seq: int
    hash: str
    spent: dict[str, float]


def read_head_copy(path: Path) -> HeadCopy | None:
    """The copy at ``path`` (``None`` when there is none); ``AuditError`` when it is unreadable."""
    try:
        body = json.loads(path.read_text())
        return HeadCopy(str(body["site"]), int(body["seq"]), str(body["hash"]), dict(body["spent"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AuditError(
            f"the audit head copy {path} is unreadable ({err}); restore it, or move it away to start the "
            "site without the rollback check for this once"
        ) from err


def write_head_copy(path: Path, head: HeadCopy) -> None:
    """Replace the copy atomically (tmp, rename; 0600, folder 0700). Not fsynced: a copy a power cut
    leaves behind the log is accepted (the log may be ahead of its copy, never behind it)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"site": head.site, "seq": head.seq, "hash": head.hash, "spent": head.spent}, fh)
    os.replace(tmp, path)

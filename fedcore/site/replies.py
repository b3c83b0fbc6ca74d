"""A site's last released reply per job and kind, kept so that a resumed job is answered again.

A coordinator that dies after a site answered round r, but before it checkpointed round r, asks
for round r again when the job resumes. The site has released that round (and its plan is charged);
computing it again would be a second release: under DP fresh noise on the same data, which the plan
did not charge. So the site answers a round it already released with the very reply it gave, kept
here (``OUT``: the site's own state folder, never the coordinator's), and only when the request is
the same job (id and digest) and the same round. A round whose work failed after it was charged
keeps its refusal here instead, refused again the same way (``SiteRuntime.computing``). An outcome
is stored before anything is sent, so a recorded release without one was never sent: the site
stopped while computing it (``SiteRuntime.authorize_once``). An older round, whose reply a later
one replaced, is refused. Replaying bytes the
coordinator already received releases nothing new, whatever else it sends. ``claim`` lets one
request per job and kind be answered at a time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcore.aggregators.base import Arrays
from fedcore.durable import write_durably
from fedcore.site.ledger import ReleaseKind

__all__ = ["ReplyStore", "StoredReply", "write_npz_atomic"]


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray[Any, Any]]) -> None:
    """Write ``arrays`` to ``path`` (0600, folder 0700) durably: a crash or power cut leaves the old
    file or the new one (a stored reply must outlive the release it records, see ``authorize_once``)."""
    write_durably(path, lambda fh: np.savez(fh, allow_pickle=False, **arrays), private=True)


@dataclass(frozen=True)
class StoredReply:
    """A released reply: the update (train: float64 deltas, or under HE the ciphertext as uint8;
    empty for evaluate) and its metrics, exactly as sent."""

    arrays: Arrays
    metrics: dict[str, float]
    weight: float = 0.0
    refusal: str = ""  # the outcome of a charged round whose work failed: refused again, as before
    extras: Mapping[str, Arrays] = field(default_factory=dict)  # the algorithm's extras sent with it


class ReplyStore:
    """``folder/replies/<hash of job id>-<kind>.npz``: the last round of each kind, per job."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "replies"

    def _path(self, job_id: str, kind: ReleaseKind) -> Path:
        name = hashlib.sha256(job_id.encode()).hexdigest()[:24]  # a job id from the wire is no file name
        return self.folder / f"{name}-{kind}.npz"

    def save(
        self, job_id: str, digest: str, kind: ReleaseKind, server_round: int, reply: StoredReply
    ) -> None:
        """Keep ``reply`` as the last one released for (job, kind); atomic (tmp, fsync, rename)."""
        meta = {"job_id": job_id, "digest": digest, "round": server_round, "metrics": reply.metrics,
                "weight": reply.weight, "n": len(reply.arrays), "refusal": reply.refusal,
                "extras": {k: len(v) for k, v in reply.extras.items()}}  # fmt: skip
        arrays = {f"a{i}": np.asarray(a) for i, a in enumerate(reply.arrays)}
        arrays |= {
            f"e{j}.{i}": np.asarray(a) for j, v in enumerate(reply.extras.values()) for i, a in enumerate(v)
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        write_npz_atomic(self._path(job_id, kind), arrays)

    @contextmanager
    def claim(self, job_id: str, kind: ReleaseKind) -> Iterator[bool]:
        """Hold (True) the job's lock for ``kind`` while one request of it is answered; False when
        another live process holds it. The kernel drops the lock of a process that dies."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._path(job_id, kind).with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def last_round(self, job_id: str, kind: ReleaseKind) -> int | None:
        """The round of the last stored reply (0: none stored; None: unreadable, so unknown)."""
        path = self._path(job_id, kind)
        if not path.is_file():
            return 0
        try:
            with np.load(path, allow_pickle=False) as data:
                return int(json.loads(bytes(data["meta"]).decode())["round"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None

    def load(self, job_id: str, digest: str, kind: ReleaseKind, server_round: int) -> StoredReply | None:
        """The reply released for exactly this job, digest, kind and round (``None`` otherwise)."""
        path = self._path(job_id, kind)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode())
                if (meta["job_id"], meta["digest"], meta["round"]) != (job_id, digest, server_round):
                    return None  # another round's reply (the usual case): its arrays are not read
                arrays = tuple(np.array(data[f"a{i}"]) for i in range(int(meta["n"])))  # dtype as saved
                extras = {
                    name: tuple(np.array(data[f"e{j}.{i}"]) for i in range(int(n)))
                    for j, (name, n) in enumerate(meta.get("extras", {}).items())
                }
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None  # unreadable: the round is refused as answered already, never recomputed
        metrics = {k: float(v) for k, v in meta["metrics"].items()}
        return StoredReply(arrays, metrics, float(meta["weight"]), str(meta.get("refusal", "")), extras)

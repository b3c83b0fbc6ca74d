"""A site's client-algorithm state (SCAFFOLD's ``c_i``, FedDyn's gradient), kept across rounds.

``OUT/algorithm/<hash of job id>/<round>.npz``, in the site's own state folder: the state after each
round the site trained, written durably before its reply is stored (``SiteRuntime.train``), so it
survives a node restart and ``fedcore resume``. A round is trained from the state of the latest
earlier round the site trained (a site sampled out of a round keeps its state). The two latest
files are kept: a round computed again after the site stopped between its state and its reply
(``SiteRuntime.authorize_once``) starts again from the one before. Never sent anywhere.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from fedcore.algorithms.base import State
from fedcore.errors import PolicyError
from fedcore.site.replies import write_npz_atomic

__all__ = ["AlgorithmStates"]


class AlgorithmStates:
    """The algorithm states of one site's jobs, under ``folder/algorithm``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "algorithm"

    def _job(self, job_id: str) -> Path:
        return (
            self.folder / hashlib.sha256(job_id.encode()).hexdigest()[:24]
        )  # an id from the wire is no name

    def _rounds(self, job_id: str) -> list[int]:
        folder = self._job(job_id)
        if not folder.is_dir():
            return []
        return sorted(int(p.stem) for p in folder.glob("*.npz") if p.stem.isdigit())

    def load(self, job_id: str, *, before: int) -> State | None:
        """The state saved after the latest round ``< before`` (``None``: the site's first round)."""
        earlier = [r for r in self._rounds(job_id) if r < before]
        if not earlier:
            return None
        path = self._job(job_id) / f"{earlier[-1]}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode())
                if meta["job_id"] != job_id:
                    raise ValueError(f"{path} holds job {meta['job_id']!r}")
                return {
                    name: tuple(np.array(data[f"{j}.{i}"]) for i in range(int(n)))
                    for j, (name, n) in enumerate(meta["names"].items())
                }
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise PolicyError(
                f"the algorithm state {path} is unreadable ({err}); the job cannot continue at this site "
                "from a state it does not have: start the job again"
            ) from err

    def save(self, job_id: str, server_round: int, state: State) -> None:
        """Keep ``state`` as the state after ``server_round``; older files but the latest one go."""
        if not state and not self._rounds(job_id):
            return  # a stateless algorithm writes nothing
        meta = {"job_id": job_id, "round": server_round, "names": {k: len(v) for k, v in state.items()}}
        arrays = {f"{j}.{i}": np.asarray(a) for j, v in enumerate(state.values()) for i, a in enumerate(v)}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        write_npz_atomic(self._job(job_id) / f"{server_round}.npz", arrays)
        older = [r for r in self._rounds(job_id) if r < server_round]
        for r in older[:-1]:
            (self._job(job_id) / f"{r}.npz").unlink(missing_ok=True)

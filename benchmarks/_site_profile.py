"""Where a fedcore site's time goes per message, cold (first message of a site in a process) and warm.

In this process, outside Ray: the sites' real ClientApp (``make_client_app``) answers describe and
admit for ``k`` sites, then train and evaluate for two rounds. Cold: before each message of round 1
the process forgets every site (``SiteRuntime`` cache, open SQLite connections), as a Ray worker
does for a site it has not served yet; warm: round 2 as is. ``ms``: mean wall ms per message,
unprofiled; ``parts_ms``: the same messages again under cProfile (which inflates small calls),
cumulative ms per message of fedcore's parts; ``raw_ms``: SQLite commits and fsync calls.
"""

from __future__ import annotations

import cProfile
import pstats
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["site_breakdown"]

PARTS = {  # label: (file suffix, function name); cumulative time
    "site runtime load": ("fedcore/clients/runtime.py", "load"),
    "  of which data (site TOML, CSV, split)": ("fedcore/data.py", "prepare_site"),
    "  of which guard open (ledger/audit open, checks)": ("fedcore/site/guard.py", "__init__"),
    "request parse + plan": ("fedcore/clients/runtime.py", "plan"),
    "replay check": ("fedcore/clients/runtime.py", "replay"),
    "release (charge, release row, audit, anchor)": ("fedcore/clients/runtime.py", "authorize_once"),
    "training (torch)": ("fedcore/clients/runtime.py", "local_update"),
    "scoring (torch, sklearn)": ("fedcore/clients/runtime.py", "scores"),
    "reply store (npz, fsync)": ("fedcore/site/replies.py", "save"),
    "handler total": ("fedcore/flower/client_app.py", "__call__"),
}
RAW = {
    "sqlite commit": "<method 'commit' of 'sqlite3.Connection' objects>",
    "fsync": "<built-in method posix.fsync>",
}


def _forget() -> None:
    from fedcore.clients.runtime import SiteRuntime
    from fedcore.privacy import _sqlite

    SiteRuntime._cache.clear()
    for key in list(_sqlite._OPEN):
        _sqlite._drop(key)


def _parts(stats: pstats.Stats, n: int) -> dict[str, float]:
    out = {label: 0.0 for label in (*PARTS, *RAW)}
    for (file, _, func), (_, _, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        for label, (suffix, name) in PARTS.items():
            if file.endswith(suffix) and func == name:
                out[label] += ct
        for label, name in RAW.items():
            if func == name:
                out[label] += tt
    return {k: round(v * 1e3 / n, 2) for k, v in out.items()}


def site_breakdown(app_dir: Path, sites: Sequence[Path], job_file: Path, *, k: int = 10) -> dict[str, Any]:
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedcore.config import load_job, load_site
    from fedcore.config.job import JobRequest
    from fedcore.data import prepare_site
    from fedcore.flower.client_app import make_client_app
    from fedcore.flower.serde import arrays_to_record
    from fedcore.models import build_model, get_arrays
    from fedcore.site.guard import init_site_state

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    chosen = list(range(min(k, len(sites))))
    spec = load_job(job_file)
    wire = JobRequest(f"{spec.name}-{uuid.uuid4().hex[:12]}", len(sites), spec).to_wire()
    features = len(prepare_site(load_site(sites[0])).features)
    arrays = arrays_to_record(get_arrays(build_model(spec.model.as_table(), features, seed=0)))
    out: dict[str, Any] = {"sites_profiled": len(chosen)}
    with tempfile.TemporaryDirectory(prefix="fedcore-site-profile-") as tmp:
        state = Path(tmp)
        for i in chosen:
            init_site_state(load_site(sites[i]), state)
        app = make_client_app(app_dir, sites=sites, state_dir=state)

        def send(i: int, kind: str, config: dict[str, Any]) -> None:
            content = RecordDict({"config": ConfigRecord(config)})
            if kind != "query":
                content["arrays"] = arrays
            ctx = Context(
                run_id=1, node_id=i + 1, node_config={"partition-id": i}, state=RecordDict(), run_config={}
            )
            reply = app(Message(content, dst_node_id=i + 1, message_type=kind), ctx)
            if reply.has_error():
                raise RuntimeError(f"site profile: {reply.error.reason}")

        def phase(kind: str, rnd: int, cold: bool, prof: cProfile.Profile | None) -> float:
            t = 0.0
            for i in chosen:
                if cold:
                    _forget()
                t0 = time.perf_counter()
                if prof is not None:
                    prof.enable()
                send(i, kind, {"job": wire, "server-round": rnd})
                if prof is not None:
                    prof.disable()
                t += time.perf_counter() - t0
            return round(t * 1e3 / len(chosen), 2)

        for i in chosen:
            send(i, "query", {"action": "describe"})
            send(i, "query", {"action": "admit", "job": wire})
        send(chosen[0], "train", {"job": wire, "server-round": 1})  # torch's one-time imports
        for rnd, profiled in ((2, False), (3, False), (4, True), (5, True)):
            cold = rnd % 2 == 0  # rounds 2 and 4: every site's first message in this process
            if not cold:  # rounds 3 and 5: every site served before in this process
                for i in chosen:
                    send(i, "query", {"action": "describe"})
            for kind in ("train", "evaluate"):
                label = f"{kind} {'cold' if cold else 'warm'}"
                if profiled:
                    prof = cProfile.Profile()
                    phase(kind, rnd, cold, prof)
                    out[f"{label} parts_ms"] = _parts(pstats.Stats(prof), len(chosen))
                else:
                    out[f"{label} ms"] = phase(kind, rnd, cold, None)
    return out

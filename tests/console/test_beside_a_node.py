"""The console beside a running node: a writer process charges while the console reads.

A reader must never block the node (WAL: readers and the writer do not wait for each other), never
write (``mode=ro``), and never see a broken state (the audit log's anchor may trail its head by the
record being written, which the check accepts).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

from fedcore.config import load_site
from fedcore.console import SiteReader, create_app
from fedcore.privacy.accounting import event_to_json, gaussian_event
from fedcore.site.guard import SiteGuard, init_site_state
from tests.adversarial.coordinator import DEFAULT_POLICY, make_site
from tests.console.served_site import client

ANSWERS = 30
NOISE = 20.0  # one answer's Gaussian: 30 of them compose to well under the budget of 20


@dataclass(frozen=True)
class _Request:
    """What the guard reads of a request: its job id and digest."""

    job_id: str
    digest: str


def _node(site_file: str, state_dir: str, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """A node answering ``ANSWERS`` rounds of one admitted job, each charged and audited."""
    try:
        guard = SiteGuard(load_site(site_file), Path(state_dir))
        one = gaussian_event(noise_multiplier=NOISE)
        request = _Request("busy-job", "d" * 64)
        summary = {"epsilon": 0.0, "charging": {"upfront": "", "train": event_to_json(one)}}
        guard.reserve(
            request.job_id, request.digest, [gaussian_event(noise_multiplier=NOISE, count=ANSWERS)],
            {"train": ANSWERS}, summary, "plan reserved", actor="coordinator",
        )  # fmt: skip
        out.put(("started", time.perf_counter()))
        slowest = 0.0
        for server_round in range(1, ANSWERS + 1):
            t0 = time.perf_counter()
            guard.release(request, "train", server_round, actor="coordinator")  # type: ignore[arg-type]
            slowest = max(slowest, time.perf_counter() - t0)
        out.put(("done", slowest))
    except Exception as err:  # reported to the test, which fails with it
        out.put(("error", repr(err)))


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes() if p.exists() else b"-")
    return h.hexdigest()


def test_reads_while_a_node_charges_never_block_it_and_never_write(tmp_path: Path) -> None:
    site_file = make_site(tmp_path, DEFAULT_POLICY)
    site = load_site(site_file)
    paths = init_site_state(site, tmp_path / "state")
    SiteGuard(site, tmp_path / "state")  # the node's first start: sets the budget
    reader = SiteReader(site, tmp_path / "state")
    app = client(create_app(reader))
    out: mp.Queue = mp.get_context("spawn").Queue()  # type: ignore[type-arg]
    node = mp.get_context("spawn").Process(target=_node, args=(str(site_file), str(tmp_path / "state"), out))
    node.start()
    kind, value = out.get(timeout=120)
    assert kind == "started", value
    spent, heads, reads = [], [], 0
    while node.is_alive() or not reads:
        budget = app.get("/api/budget").json()["datasets"][0]
        chain = app.get("/api/audit").json()
        assert chain["ok"], chain["problems"]  # never a broken state mid-write
        spent.append(budget["spent_epsilon"])
        heads.append(int(chain["head"].split(":")[0]))
        reads += 1
    node.join(timeout=60)
    kind, value = out.get(timeout=10)
    assert kind == "done", value
    assert value < 5.0, f"an answer waited {value:.2f} s"  # the busy timeout is 60 s: nobody waited on it
    assert reads >= 3 and spent == sorted(spent) and heads == sorted(heads)  # read during, monotone
    final = SiteGuard(site, tmp_path / "state")
    assert len(final.plans.releases("busy-job")) == ANSWERS  # every answer recorded, none lost
    assert (
        app.get("/api/budget").json()["datasets"][0]["spent_epsilon"] == final.ledger.spent(site.dataset)[0]
    )
    files = (
        paths.ledger,
        paths.ledger.with_name("ledger.db-wal"),
        paths.audit,
        paths.audit.with_name("audit.db-wal"),
    )
    before = _digest(*files)
    for url in ("/", "/jobs", "/audit", "/api/budget", "/api/jobs", "/api/audit", "/job?id=busy-job"):
        assert app.get(url).status_code == 200
    assert _digest(*files) == before  # reading wrote nothing: not the files, not their WAL

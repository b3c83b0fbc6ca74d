"""Two ``fedcore node`` processes with default flags share a machine (each takes a free runtime port);
SIGTERM to one ends it and every process it started within 15 s (exit 0); SIGKILL to the other leaves
no process of its tree alive within 15 s. Real Flower processes: an insecure SuperLink on loopback
(slow: about a minute)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.flower.federation import BIN, free_port, processes
from tests.flower.guide import MARKER, REPO, marked, wait_for

pytestmark = pytest.mark.slow

APP = REPO / "examples" / "medical"


def _node(env: dict[str, str], site: str, link: str, state: Path, log: Path) -> subprocess.Popen[bytes]:
    from fedcore.config import load_site
    from fedcore.site.guard import init_site_state

    init_site_state(load_site(APP / "sites" / f"{site}.toml"), state)
    cmd = [str(BIN / "fedcore"), "node", "--site", str(APP / "sites" / f"{site}.toml"), "--superlink", link,
           "--insecure", "--state-dir", str(state)]  # fmt: skip
    out = log.open("wb")
    return subprocess.Popen(cmd, env={**env, MARKER: f"{env[MARKER]}:{site}"}, stdout=out, stderr=out,
                            start_new_session=True)  # fmt: skip


def test_two_default_nodes_stay_up_and_each_ends_with_its_tree(tmp_path: Path, shared_data: Path) -> None:
    marker = uuid.uuid4().hex
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "PYTHONPATH": str(REPO), MARKER: marker,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    port = free_port()
    nodes = {}
    try:
        with processes(tmp_path / "logs") as procs:
            procs.superlink(env, port, tmp_path / "state.db")
            for site in ("cleveland", "hungary"):
                nodes[site] = _node(
                    env, site, f"127.0.0.1:{port}", tmp_path / "state", tmp_path / f"{site}.log"
                )
            for site in nodes:
                log = tmp_path / f"{site}.log"
                wait_for(f"{site}'s node to connect", lambda log=log: "SuperNode ID" in log.read_text(), 300,
                         context=lambda log=log: log.read_text()[-3000:])  # fmt: skip
            time.sleep(5)  # both stay up: no port clash, no exit
            assert all(p.poll() is None for p in nodes.values()), {s: p.poll() for s, p in nodes.items()}
            ports = {s: (tmp_path / f"{s}.log").read_text().split("127.0.0.1:")[1].split()[0] for s in nodes}
            assert ports["cleveland"] != ports["hungary"], ports
            assert marked(f"{marker}:cleveland") and marked(f"{marker}:hungary")

            t0 = time.monotonic()
            nodes["cleveland"].send_signal(signal.SIGTERM)
            wait_for("cleveland's tree to end on SIGTERM", lambda: not marked(f"{marker}:cleveland"), 15,
                     context=lambda: str(marked(f"{marker}:cleveland")))  # fmt: skip
            assert nodes["cleveland"].wait(timeout=5) == 0 and time.monotonic() - t0 < 15

            t0 = time.monotonic()
            nodes["hungary"].send_signal(signal.SIGKILL)
            wait_for("hungary's tree to die with it on SIGKILL", lambda: not marked(f"{marker}:hungary"), 15,
                     context=lambda: str(marked(f"{marker}:hungary")))  # fmt: skip
            assert time.monotonic() - t0 < 15
            text = (tmp_path / "cleveland.log").read_text()
            assert "stopped on SIGTERM; every process it started ended" in text
            assert "Traceback" not in text, text
    finally:
        for p in nodes.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)

"""The medical app runs unchanged on Flower's Deployment Engine: a real SuperLink, one SuperNode per
hospital on loopback (insecure mode) behind fedcore's gate, the job submitted with ``flwr run``."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flower.federation import BIN, free_port, processes, write_flwr_home

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "examples" / "medical"
HOSPITALS = ("cleveland", "hungary", "switzerland", "va")


@pytest.fixture
def federation(tmp_path: Path, shared_data: Path) -> Iterator[tuple[dict[str, str], str]]:
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    link_port = free_port()
    write_flwr_home(tmp_path / "flwr", link_port)
    logs, state = tmp_path / "logs", tmp_path / "state"
    with processes(logs) as procs:
        procs.superlink(env, link_port, tmp_path / "state.db")
        time.sleep(3)
        for h in HOSPITALS:
            site = APP / "sites" / f"{h}.toml"
            # a new hospital creates its ledger and audit log once, explicitly
            init = [str(BIN / "fedcore"), "ledger", str(site), "--init", "--state-dir", str(state)]
            subprocess.run(init, env=env, check=True, capture_output=True, timeout=120)
            # the hospital's one command: validates its site file, data and state, then becomes a
            # SuperNode whose messages are answered by fedcore's installed ClientApp (the gate)
            procs.start(
                h, env, "fedcore", "node", "--site", str(site), "--superlink", f"127.0.0.1:{link_port}",
                "--insecure", "--port", str(free_port()), "--state-dir", str(state),
            )  # fmt: skip
        yield env, str(logs)


def test_medical_job_runs_on_real_superlink_and_supernodes(
    federation: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, logs = federation
    out = tmp_path / "run"
    cmd = [
        str(BIN / "flwr"),
        "run",
        str(APP),
        "local",
        "--stream",
        "--run-config",
        f"out-dir='{out}' set='job.rounds=2'",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, timeout=420, check=False)
    log_tail = proc.stdout.decode()[-3000:] + proc.stderr.decode()[-3000:]
    assert proc.returncode == 0, log_tail
    summary = json.loads((out / "summary.json").read_text())  # a deployment run reports too
    assert summary["mean_site_accuracy"] > 0.55 and (out / "report.md").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2
    final = metrics["rounds"][-1]["evaluate"]
    assert sorted(final) == sorted(HOSPITALS), f"sites that evaluated: {sorted(final)}; logs in {logs}"
    assert sum(m["accuracy"] for m in final.values()) / 4 > 0.55
    state = Path(logs).parent / "state"
    assert sorted(p.parent.name for p in state.glob("*/audit.db")) == sorted(HOSPITALS)
    node_log = (Path(logs) / "cleveland.log").read_text()
    assert "fedcore gate: running fedcore's built-in ClientApp" in node_log  # the app is not trusted

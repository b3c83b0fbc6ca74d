"""The medical app runs unchanged on Flower's Deployment Engine: a real SuperLink, one SuperNode per
hospital on loopback (insecure mode) behind fedcore's gate, the job submitted with ``flwr run``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "examples" / "medical"
BIN = Path(sys.executable).parent
HOSPITALS = ("cleveland", "hungary", "switzerland", "va")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def federation(tmp_path: Path, shared_data: Path) -> Iterator[tuple[dict[str, str], str]]:
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    link_port = _free_port()
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{link_port}"\n'
        "insecure = true\n"
    )
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str, *args: str) -> None:
        out = (logs / f"{name}.log").open("wb")
        procs.append(subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env, stdout=out, stderr=out))

    try:
        start(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(link_port),
            "--disable-runtime-dependency-installation",
            "--database",
            str(tmp_path / "state.db"),
        )
        time.sleep(3)
        for h in HOSPITALS:
            site = APP / "sites" / f"{h}.toml"
            # a new hospital creates its ledger and audit log once, explicitly
            init = [
                str(BIN / "fedcore"),
                "ledger",
                str(site),
                "--init",
                "--state-dir",
                str(tmp_path / "state"),
            ]
            subprocess.run(init, env=env, check=True, capture_output=True, timeout=120)
            # the hospital's one command: validates its site file, data and state, then becomes a
            # SuperNode whose messages are answered by fedcore's installed ClientApp (the gate)
            start(
                h,
                "fedcore",
                "node",
                "--site",
                str(site),
                "--superlink",
                f"127.0.0.1:{link_port}",
                "--insecure",
                "--port",
                str(_free_port()),
                "--state-dir",
                str(tmp_path / "state"),
            )
        yield env, str(logs)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        assert all(p.poll() is not None for p in procs), "a Flower process survived"


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
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2
    final = metrics["rounds"][-1]["evaluate"]
    assert sorted(final) == sorted(HOSPITALS), f"sites that evaluated: {sorted(final)}; logs in {logs}"
    assert sum(m["accuracy"] for m in final.values()) / 4 > 0.55
    state = Path(logs).parent / "state"
    assert sorted(p.parent.name for p in state.glob("*/audit.db")) == sorted(HOSPITALS)
    node_log = (Path(logs) / "cleveland.log").read_text()
    assert "fedcore gate: running fedcore's built-in ClientApp" in node_log  # the app is not trusted

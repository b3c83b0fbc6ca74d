"""Real Flower processes on loopback for the deployment tests: ports, FLWR_HOME, certificates, node
registration, start and stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from fedcore.cli.certs import LinkCertificates

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_flwr_home(home: Path, link_port: int, root_certificates: Path | None = None) -> None:
    """A ``$FLWR_HOME/config.toml`` whose default connection is the loopback SuperLink: over TLS
    (verified against ``root_certificates``) when given, else insecure."""
    home.mkdir(parents=True, exist_ok=True)
    tls = "insecure = true" if root_certificates is None else f'root-certificates = "{root_certificates}"'
    local = f'[superlink.local]\naddress = "127.0.0.1:{link_port}"\n{tls}\n'
    (home / "config.toml").write_text(f'[superlink]\ndefault = "local"\n\n{local}')


class Processes:
    """Started processes, each logging to ``logs/<name>.log``."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.procs = logs, []  # type: list[subprocess.Popen[bytes]]
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, env: dict[str, str], *args: str) -> None:
        out = (self.logs / f"{name}.log").open("wb")
        # its own process group: what it starts (superexec, ClientApp processes) can be stopped with it
        cmd = [str(BIN / args[0]), *args[1:]]
        self.procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True))

    def superlink(
        self, env: dict[str, str], port: int, database: Path, certs: LinkCertificates | None = None
    ) -> None:
        """A SuperLink on loopback: with ``certs``, TLS and SuperNode authentication; else insecure."""
        security = ["--insecure"] if certs is None else [
            "--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.cert),
            "--ssl-keyfile", str(certs.key), "--enable-supernode-auth",
        ]  # fmt: skip
        self.start(
            "superlink", env, "flower-superlink", *security, "--host", "127.0.0.1", "--port", str(port),
            "--disable-runtime-dependency-installation", "--database", str(database),
        )  # fmt: skip
        wait_for_port(port)


def wait_for_port(port: int, timeout: float = 120.0) -> None:
    """Until something accepts TCP connections on loopback ``port`` (a loaded machine is slow)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")
        time.sleep(0.2)


def register_node(env: dict[str, str], public_key: Path) -> None:
    """The operator's step: ``flwr supernode register KEY.pub local`` (retried while the link starts)."""
    cmd = [str(BIN / "flwr"), "supernode", "register", str(public_key), "local"]
    for _ in range(20):
        proc = subprocess.run(cmd, env=env, capture_output=True, timeout=120, check=False)
        if proc.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"flwr supernode register {public_key} failed: {proc.stdout!r} {proc.stderr!r}")


@contextmanager
def processes(logs: Path) -> Iterator[Processes]:
    """Every process started inside, and everything it started, is stopped even when the test fails:
    SIGTERM to each (a clean shutdown), then SIGKILL to each one's process group."""
    running = Processes(logs)
    try:
        yield running
    finally:
        for p in running.procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in running.procs:
            with suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        for p in running.procs:
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # stragglers, and children the leader left behind
            p.wait(timeout=30)
        assert all(p.returncode is not None for p in running.procs), "a Flower process survived"

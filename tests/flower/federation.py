"""Real Flower processes on loopback for the deployment tests: ports, FLWR_HOME, start and stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_flwr_home(home: Path, link_port: int) -> None:
    """A ``$FLWR_HOME/config.toml`` whose default connection is the loopback SuperLink."""
    home.mkdir(parents=True, exist_ok=True)
    local = f'[superlink.local]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    (home / "config.toml").write_text(f'[superlink]\ndefault = "local"\n\n{local}')


class Processes:
    """Started processes, each logging to ``logs/<name>.log``."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.procs = logs, []  # type: list[subprocess.Popen[bytes]]
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, env: dict[str, str], *args: str) -> None:
        out = (self.logs / f"{name}.log").open("wb")
        self.procs.append(subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env, stdout=out, stderr=out))

    def superlink(self, env: dict[str, str], port: int, database: Path) -> None:
        self.start(
            "superlink", env, "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port),
            "--disable-runtime-dependency-installation", "--database", str(database),
        )  # fmt: skip


@contextmanager
def processes(logs: Path) -> Iterator[Processes]:
    """Every process started inside is stopped (SIGTERM, then kill) even when the test fails."""
    running = Processes(logs)
    try:
        yield running
    finally:
        for p in running.procs:
            p.send_signal(signal.SIGTERM)
        for p in running.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        assert all(p.poll() is not None for p in running.procs), "a Flower process survived"

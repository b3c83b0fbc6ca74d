"""Running ``flower-supernode`` for ``fedcore node``: signals, the log relay, and a restart's wait.

A node that stopped cleanly told the SuperLink so; one that was killed (SIGKILL, a crash, a power
cut) still counts as online there until two of its heartbeats are missed (up to ~60 s with Flower
1.42's 30 s interval), and the SuperLink refuses to activate its key again meanwhile, with the same
answer it gives an unregistered key (Flower's exit code 305). So a refused start is tried again every
:data:`RETRY_EVERY` seconds for :data:`ACTIVATION_PATIENCE` seconds, saying so, before ``fedcore
node`` gives up with one line naming both causes.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from fedcore.cli.nodelog import NodeLog
from fedcore.cli.supervise import start_group, stop_group

__all__ = ["ACTIVATION_PATIENCE", "NOT_REGISTERED", "PORT_IN_USE", "Outcome", "Stop", "run_node"]

# flower-supernode logs this Flower exit code (and exits with status 1) when the SuperLink refuses to
# activate the node: its key is not registered, or the node still counts as online there
NOT_REGISTERED = b"Exit Code: 305"
PORT_IN_USE = b"[Errno 98]"  # the runtime API's port is taken
ACTIVATION_PATIENCE = 90.0  # > 2 heartbeats of 30 s: a killed node's old run is then offline
RETRY_EVERY = 10.0


class Stop:
    """SIGTERM/SIGINT received: which one (the handlers only record it; the main loop acts)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; whether a stop was asked meanwhile."""
        deadline = time.monotonic() + seconds
        while self.signum is None and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.signum is not None


@dataclass
class Outcome:
    """How one start of the SuperNode ended."""

    returncode: int = 0
    stopped: bool = False  # by SIGTERM/SIGINT to fedcore node
    seconds: float = 0.0  # to stop the whole tree
    seen: dict[str, bool] = field(default_factory=lambda: {"refused": False, "port": False})


def _relay(child: subprocess.Popen[bytes], node_log: Path, seen: dict[str, bool]) -> None:
    """The node's output, one clean line per event (``NodeLog``), on stdout; tracebacks to node.log."""
    assert child.stdout is not None
    with node_log.open("a") as raw:
        lines = NodeLog(raw)
        for line in child.stdout:
            seen["refused"] = seen["refused"] or NOT_REGISTERED in line
            seen["port"] = seen["port"] or PORT_IN_USE in line
            for out in lines.feed(line.decode(errors="replace")):
                print(out, flush=True)
        for out in lines.flush():
            print(out, flush=True)


def _once(cmd: list[str], node_log: Path, stop: Stop) -> Outcome:
    child = start_group(cmd)
    outcome = Outcome()
    relay = threading.Thread(target=_relay, args=(child, node_log, outcome.seen), daemon=True)
    relay.start()
    while child.poll() is None and stop.signum is None:
        with suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)
    outcome.stopped = stop.signum is not None
    outcome.seconds = stop_group(child)  # what the SuperNode started goes too, even when it ended itself
    relay.join(timeout=5)
    outcome.returncode = child.returncode
    return outcome


def run_node(cmd: list[str], node_log: Path, stop: Stop) -> Outcome:
    """Run the SuperNode until it ends or a stop is asked; a start the SuperLink refuses is tried
    again for up to :data:`ACTIVATION_PATIENCE` seconds (a killed node's old run still online)."""
    first = time.monotonic()
    while True:
        outcome = _once(cmd, node_log, stop)
        refused = outcome.returncode != 0 and outcome.seen["refused"] and not outcome.stopped
        left = ACTIVATION_PATIENCE - (time.monotonic() - first)
        if not refused or left <= 0:
            return outcome
        print(
            "WARNING fedcore node: the SuperLink refused to activate this node: its key is not registered, "
            "or this node's previous run (killed, so it never signed off) still counts as online there for "
            f"up to a minute; trying again in {RETRY_EVERY:.0f} s (for {left:.0f} s more)",
            flush=True,
        )
        if stop.wait(RETRY_EVERY):
            outcome.stopped = True
            return outcome

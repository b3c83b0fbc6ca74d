"""``fedcore node`` owns its process tree: what it starts ends when it ends, however it ends.

- The SuperNode runs in a session (and process group) of its own, so that everything it starts (its
  SuperExec, the ClientApp processes) can be signalled at once, and a terminal's Ctrl-C reaches it
  only through ``fedcore node``.
- SIGTERM or SIGINT to ``fedcore node``: SIGTERM to that group (Flower's processes shut down
  cleanly), up to :data:`STOP_GRACE` seconds, then SIGKILL to whatever is left of the group; it returns
  once no process of the group is alive (:data:`STOP_GRACE` + a few seconds at most).
- SIGKILL to ``fedcore node`` (nothing runs in the process): the kernel kills the SuperNode, whose
  death kills the SuperExec, whose death kills the ClientApp processes (``fedcore.flower.lifetime``).
- The SuperNode exits on its own: the rest of its group is stopped the same way.

Checked by ``tests/flower/test_node_process.py`` (both signals, with real Flower processes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

from fedcore.flower.lifetime import die_with_parent

__all__ = ["STOP_GRACE", "group_members", "start_group", "stop_group"]

STOP_GRACE = 8.0  # seconds from SIGTERM to SIGKILL: Flower's processes stop in about one second


def start_group(cmd: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` as the leader of a new session, killed by the kernel when this process exits,
    its output (stdout and stderr, merged) on a pipe."""
    parent = os.getpid()
    return subprocess.Popen(
        list(cmd),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: die_with_parent(parent),  # before any thread of ours starts
    )


def group_members(pgid: int) -> list[int]:
    """Processes of the process group ``pgid`` that are alive (zombies, already dead, left out)."""
    if not Path("/proc/self/stat").is_file():  # not Linux: any member, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while we looked
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # the group is empty already
        os.killpg(pgid, sig)


def stop_group(child: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> float:
    """SIGTERM to ``child``'s process group; after ``grace`` seconds SIGKILL to what is left; return
    when no process of the group is alive (the seconds it took)."""
    started, pgid = time.monotonic(), child.pid  # the session leader's pid is its group's id
    _signal_group(pgid, signal.SIGTERM)
    deadline = started + grace
    while time.monotonic() < deadline and (child.poll() is None or group_members(pgid)):
        time.sleep(0.1)
    if child.poll() is None or group_members(pgid):
        _signal_group(pgid, signal.SIGKILL)
    child.wait()
    while group_members(pgid) and time.monotonic() < deadline + 5:
        time.sleep(0.05)  # SIGKILL'd processes leave the table within milliseconds
    return time.monotonic() - started

"""A node's process tree dies with it: the parent-death signal through ``start_group`` and the
``fedcore.flower.lifetime`` shim, and ``stop_group`` (SIGTERM, then SIGKILL after the grace period).
Plain Python processes stand in for Flower's here (fast); tests/cli/test_node_process.py runs the real
``fedcore node`` tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedcore.cli.supervise import group_members, start_group, stop_group

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's prctl and /proc")

# a "node": starts a child through the lifetime shim (as flower-supernode starts flower-superexec),
# which starts a grandchild the same way; each writes its pid, then sleeps
TREE = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    depth, where = int(sys.argv[1]), sys.argv[2]
    if depth == 0 and len(sys.argv) > 3:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a leader that will not stop when asked
    open(f"{where}/{depth}.pid", "w").write(str(os.getpid()))
    if depth < 2:
        me = [sys.executable, __file__, str(depth + 1), where]
        subprocess.Popen([sys.executable, "-m", "fedcore.flower.lifetime", str(os.getpid()), *me])
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _tree(tmp_path: Path, *stubborn: str) -> tuple[subprocess.Popen[bytes], list[int]]:
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = start_group([sys.executable, str(script), "0", str(tmp_path), *stubborn], env=env)
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"{d}.pid").is_file() for d in range(3)):
        assert time.monotonic() < deadline, "the process tree did not start"
        time.sleep(0.1)
    time.sleep(0.2)
    return proc, [int((tmp_path / f"{d}.pid").read_text()) for d in range(3)]


def test_sigkill_of_the_supervisor_takes_the_whole_tree(tmp_path: Path) -> None:
    """The supervisor (here a Python process running start_group) is SIGKILLed: all three die."""
    runner = tmp_path / "supervisor.py"
    runner.write_text(
        "import sys, time\nfrom fedcore.cli.supervise import start_group\n"
        f"p = start_group([sys.executable, {str(tmp_path / 'tree.py')!r}, '0', {str(tmp_path)!r}])\n"
        "time.sleep(600)\n"
    )
    (tmp_path / "tree.py").write_text(TREE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    sup = subprocess.Popen([sys.executable, str(runner)], env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"{d}.pid").is_file() for d in range(3)):
        assert time.monotonic() < deadline, "the process tree did not start"
        time.sleep(0.1)
    pids = [int((tmp_path / f"{d}.pid").read_text()) for d in range(3)]
    assert all(_alive(p) for p in pids)
    sup.send_signal(signal.SIGKILL)
    sup.wait()
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "a process outlived its SIGKILLed supervisor"


def test_stop_group_ends_everyone_even_one_that_ignores_sigterm(tmp_path: Path) -> None:
    proc, pids = _tree(tmp_path, "stubborn")
    took = stop_group(proc, grace=1.0)
    assert not [p for p in pids if _alive(p)] and not group_members(proc.pid)
    assert 1.0 <= took < 5.0  # the stubborn leader waited for SIGKILL after the grace, no longer


def test_a_parent_gone_before_the_request_is_noticed(tmp_path: Path) -> None:
    """The shim given a parent pid that is not its parent exits at once, running nothing."""
    marker = tmp_path / "ran"
    cmd = [
        sys.executable,
        "-m",
        "fedcore.flower.lifetime",
        "1",
        sys.executable,
        "-c",
        f"open({str(marker)!r}, 'w')",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(cmd, env=env, timeout=60, check=False)
    assert done.returncode == 1 and not marker.exists()

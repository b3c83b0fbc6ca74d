"""A node's processes die with the node: Linux's parent-death signal for every process in its tree.

``fedcore node`` starts ``flower-supernode``; that starts ``flower-superexec``, which starts one
``flwr-clientapp`` process per message. Flower's own ``--parent-pid`` monitors check every 0.2 s and
then raise SIGINT, which a busy or stuck process can ignore, and nothing watches ``fedcore node``
itself: killed with SIGKILL (a service manager's last resort), it used to leave a SuperNode serving
jobs on the site's behalf. Here each process of the tree asks the kernel to SIGKILL it the moment its
parent exits (``prctl(PR_SET_PDEATHSIG, SIGKILL)``, Linux ``prctl(2)``), and checks that its parent
is still the process that started it (a parent gone before the request would go unnoticed):

- ``fedcore node`` -> ``flower-supernode``: :func:`die_with_parent` in the child before ``exec``;
- ``flower-supernode`` -> ``flower-superexec`` and ``flower-superexec`` -> ``flwr-clientapp``: Flower
  finds both commands on ``PATH``, where ``fedcore node`` puts shims (``gate_path_dir``) that run
  ``python -m fedcore.flower.lifetime PARENT_PID REAL_COMMAND ARGS...`` (this module's ``main``:
  the request, then ``exec``; the setting survives ``exec``) or the gate, which makes the request first.

The kernel sends the signal when the *thread* that forked the child ends: each of these processes is
started from its parent's main thread (checked in Flower 1.42), so that is when the parent exits.
Elsewhere than Linux the request is skipped (the process-group kill of ``fedcore node`` remains).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["ENV_PARENT", "die_with_parent", "main"]

ENV_PARENT = "FEDCORE_PARENT_PID"  # set by the gate's shim: the process that started the gate
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(expected_parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent exits; exit now if the parent is already
    gone, i.e. this process's parent is no longer ``expected_parent`` (the pid that started it).

    Safe in a ``subprocess.Popen(preexec_fn=...)``: no allocation beyond ctypes' call, no locks.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)  # orphaned before the request took effect: the node that wanted us is gone


def main(argv: list[str] | None = None) -> None:
    """``python -m fedcore.flower.lifetime PARENT_PID COMMAND ARGS...``: die with PARENT_PID, run COMMAND."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or not args[0].isdigit():
        raise SystemExit("usage: python -m fedcore.flower.lifetime PARENT_PID COMMAND [ARGS...]")
    die_with_parent(int(args[0]))
    os.execv(args[1], args[1:])


if __name__ == "__main__":
    main()

"""The site's gate in front of submitted client code: a drop-in ``flwr-clientapp``.

In Flower 1.42 deployment the SuperNode starts ``flower-superexec``, which runs every message's
ClientApp as a new process: the command ``flwr-clientapp`` looked up on ``PATH``. That process pulls the
message, context, run and FAB (the bundle the job submitter uploaded with ``flwr run``), installs the
FAB and loads the FAB's own ``clientapp`` component. Left alone, a node runs whatever client code the
submitter ships.

This module is that process, with Flower's own ``flwr_clientapp()`` doing all the work except the choice
of code:

- the FAB's sha256 (computed here from the bytes received, and checked against the hash the node
  announces) is in the site file's ``[node] trusted_apps`` list: the FAB's own ClientApp runs, as Flower
  would run it;
- otherwise fedcore's built-in ClientApp (``make_client_app()``, the operator's installed fedcore) answers
  the message. The FAB is then neither unpacked nor are its dependencies installed, so none of the
  submitter's code or packages reach this machine's interpreter.

Every ClientApp process gets a private, empty ``FLWR_HOME`` (removed on exit), so a trusted app is loaded
from a fresh unpacking of exactly the trusted bytes. (Flower names installed apps by publisher, name,
version and only 8 hex digits of the hash, and reuses an existing folder without checking it: with a
shared ``FLWR_HOME``, a FAB crafted to collide on those 8 digits could stand in for a trusted one.)

Wiring (``fedcore node``): put ``gate_path_dir(...)`` first on ``PATH`` and set ``FEDCORE_SITE_FILE`` to
the site file before exec'ing ``flower-supernode``. The gate replaces four functions that
``flwr.supernode.runtime.run_clientapp`` calls (pull the task, unpack the FAB, install its dependencies,
load its ClientApp); if Flower's internals moved, it raises before anything runs (never falls back to
running the FAB's code).

Trust list, in the site file::

    [node]
    trusted_apps = ["<sha256 hex of the app's FAB>"]   # fedcore.flower.fab.app_digest(APP_DIR)
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from fedcore.errors import ConfigError, FedcoreError
from fedcore.flower.fab import fab_digest
from fedcore.flower.lifetime import ENV_PARENT, die_with_parent

__all__ = [
    "ENV_SITE_FILE",
    "GateError",
    "Verdict",
    "decide",
    "gate_path_dir",
    "install_gate",
    "main",
    "trusted_apps",
]

ENV_SITE_FILE = "FEDCORE_SITE_FILE"
SHIM_NAME = "flwr-clientapp"
# the globals of Flower's run_clientapp() that the gate replaces; each must exist and be used there
_PATCHED = ("pull_task_input", "install_from_fab", "install_app_dependencies", "get_load_client_app_fn")


class GateError(FedcoreError):
    """The gate cannot enforce the site's choice (Flower's internals moved, or it was bypassed)."""


def trusted_apps(site_file: Path) -> frozenset[str]:
    """The FAB digests a site trusts: its site file's ``[node] trusted_apps`` (validated by ``load_site``)."""
    from fedcore.config.site import load_site

    return frozenset(load_site(site_file).trusted_apps)


@dataclass(frozen=True)
class Verdict:
    """Which code answers this process's message, and why."""

    digest: str
    trusted: bool
    reason: str
    error: Exception | None = None  # the trust list could not be read: fail closed and say so

    def line(self, fab_id: str, fab_version: str) -> str:
        if self.error is not None:
            what = "refusing to run any ClientApp"
        elif self.trusted:
            what = "running the FAB's own ClientApp"
        else:
            what = "running fedcore's built-in ClientApp"
        return f"fedcore gate: {what} for FAB {fab_id} {fab_version} sha256={self.digest}: {self.reason}"


def decide(fab_content: bytes, announced_hash: str, site_file: str | None) -> Verdict:
    """Trusted only if the received bytes hash to a listed digest and to the hash the node announced."""
    digest = fab_digest(fab_content)
    if announced_hash != digest:
        return Verdict(digest, False, f"the node announced fab_hash {announced_hash!r}, not the bytes' hash")
    if not site_file:
        return Verdict(digest, False, f"{ENV_SITE_FILE} is not set, so no app is trusted")
    try:
        trusted = trusted_apps(Path(site_file))
    except ConfigError as err:
        return Verdict(digest, False, f"cannot read the trust list ({err})", error=err)
    if digest in trusted:
        return Verdict(digest, True, f"listed in [node] trusted_apps of {site_file}")
    return Verdict(
        digest,
        False,
        f"not in [node] trusted_apps of {site_file} ({len(trusted)} listed); the submitter's client code "
        "is not loaded",
    )


@dataclass
class _Gate:
    """Per-process state shared by the patched functions: set once the task input is pulled."""

    originals: dict[str, Any] = field(default_factory=dict)
    verdict: Verdict | None = None

    def require(self, where: str) -> Verdict:
        if self.verdict is None:
            # Flower reached the install/load step without pulling through the gate: refuse
            raise GateError(
                f"fedcore gate: {where} was called before the task input was pulled through the gate; "
                "Flower's flwr-clientapp internals changed, refusing to load any ClientApp"
            )
        return self.verdict


def _flower_clientapp_module() -> ModuleType:
    # import_module: ``flwr.supernode.cli`` re-exports a *function* named ``flwr_clientapp``
    entry = importlib.import_module("flwr.supernode.cli.flwr_clientapp")
    runtime = importlib.import_module("flwr.supernode.runtime.run_clientapp")

    if getattr(entry, "run_clientapp", None) is not getattr(runtime, "run_clientapp", None):
        raise GateError(
            "fedcore gate: flwr.supernode.cli.flwr_clientapp no longer calls "
            "flwr.supernode.runtime.run_clientapp.run_clientapp; the gate cannot be applied "
            "to this Flower version"
        )
    return runtime


def install_gate(module: ModuleType | None = None, site_file: str | None = None) -> _Gate:
    """Patch Flower's ClientApp process (``flwr.supernode.runtime.run_clientapp``) to load via the gate.

    Raises ``GateError`` if any replaced function is missing there or no longer used by
    ``run_clientapp``, or if the ``flwr-clientapp`` entry point no longer calls that ``run_clientapp``.
    """
    if module is None:
        module = _flower_clientapp_module()
    runner = getattr(module, "run_clientapp", None)
    used = set(getattr(getattr(runner, "__code__", None), "co_names", ()))
    gate = _Gate()
    for name in _PATCHED:
        original = getattr(module, name, None)
        if not callable(original) or name not in used:
            raise GateError(
                f"fedcore gate: {module.__name__}.{name} is missing or no longer used by run_clientapp; "
                "Flower's internals moved and the gate cannot be applied to this Flower version "
                "(refusing to run the FAB's code unchecked)"
            )
        gate.originals[name] = original

    def pull_task_input(*args: Any, **kwargs: Any) -> Any:
        message, context, run, fab = gate.originals["pull_task_input"](*args, **kwargs)
        gate.verdict = decide(bytes(fab.content), str(fab.hash_str), site_file)
        print(gate.verdict.line(str(run.fab_id), str(run.fab_version)), file=sys.stderr, flush=True)
        return message, context, run, fab

    def install_from_fab(fab_file: Any, *args: Any, **kwargs: Any) -> Any:
        verdict = gate.require("install_from_fab")
        if not verdict.trusted:
            return Path(os.devnull)  # not unpacked: nothing of the FAB reaches the disk
        if not isinstance(fab_file, bytes) or fab_digest(fab_file) != verdict.digest:
            raise GateError("fedcore gate: Flower asked to install FAB bytes other than the ones checked")
        return gate.originals["install_from_fab"](fab_file, *args, **kwargs)

    def install_app_dependencies(*args: Any, **kwargs: Any) -> Any:
        if not gate.require("install_app_dependencies").trusted:
            return None  # the submitter's dependency list is not installed either
        return gate.originals["install_app_dependencies"](*args, **kwargs)

    def get_load_client_app_fn(*args: Any, **kwargs: Any) -> Callable[[str, str, str], Any]:
        flower_load = gate.originals["get_load_client_app_fn"](*args, **kwargs)

        def load(fab_id: str, fab_version: str, fab_hash: str) -> Any:
            verdict = gate.require("the ClientApp loader")
            if verdict.error is not None:
                raise verdict.error  # the ServerApp gets an Error reply naming the broken trust list
            if verdict.trusted:
                if fab_hash != verdict.digest:
                    raise GateError(f"fedcore gate: asked to load FAB {fab_hash}, checked {verdict.digest}")
                return flower_load(fab_id, fab_version, fab_hash)
            from fedcore.flower.client_app import make_client_app

            return make_client_app()

        return load

    patches: dict[str, Callable[..., Any]] = {
        "pull_task_input": pull_task_input,
        "install_from_fab": install_from_fab,
        "install_app_dependencies": install_app_dependencies,
        "get_load_client_app_fn": get_load_client_app_fn,
    }
    for name, fn in patches.items():
        setattr(module, name, fn)
    return gate


def gate_path_dir(root: Path, superexec: Path | None = None) -> Path:
    """``root/gate/``, a private (0700) folder of shims to put first on ``PATH`` of ``flower-supernode``
    (Flower finds its commands by name): ``flwr-clientapp`` runs this gate, and, given the real
    ``superexec``, ``flower-superexec`` runs it so that it dies with the SuperNode
    (``fedcore.flower.lifetime``). ``-P``: the SuperNode's working folder is not put on the import path.
    """
    where = Path(root) / "gate"
    where.mkdir(parents=True, exist_ok=True)
    where.chmod(0o700)
    python = shlex.quote(sys.executable)
    shims = {
        SHIM_NAME: "# fedcore's gate: Flower's flwr-clientapp, loading only the site's trusted apps\n"
        f'{ENV_PARENT}=$PPID exec {python} -P -m fedcore.flower.gate "$@"\n'
    }
    if superexec is not None:
        shims["flower-superexec"] = (
            "# Flower's flower-superexec, killed by the kernel when its SuperNode exits\n"
            f'exec {python} -P -m fedcore.flower.lifetime "$PPID" {shlex.quote(str(superexec))} "$@"\n'
        )
    for name, body in shims.items():
        shim = where / name
        shim.write_text("#!/bin/sh\n" + body)
        shim.chmod(0o700)
    return where


def main(argv: list[str] | None = None) -> None:
    """``flwr-clientapp`` with the gate: same arguments, same behaviour but for which code is loaded."""
    if parent := os.environ.pop(ENV_PARENT, ""):  # started by the shim: die with the SuperExec
        die_with_parent(int(parent))
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    install_gate(site_file=os.environ.get(ENV_SITE_FILE) or None)
    sys.argv = [SHIM_NAME, *(sys.argv[1:] if argv is None else argv)]
    home = tempfile.mkdtemp(prefix="fedcore-clientapp-")  # private FLWR_HOME for this one message
    os.environ["FLWR_HOME"] = home
    try:
        flwr_clientapp()
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

"""``fedcore certs`` and ``fedcore node``: a real federation, TLS and node authentication by default.

``fedcore node`` runs ``flower-supernode`` as its child behind fedcore's gate and owns the process
tree (``fedcore.cli.supervise``): SIGTERM or SIGINT stops it and everything it started, SIGKILL takes
them down with it. Its local runtime port is a free one unless ``--port`` names one, so several nodes
share a machine with default flags. Flower's output becomes one line per event (``fedcore.cli.nodelog``).
A node the SuperLink refuses (Flower's exit code 305: its key is not registered) or whose port is taken
ends in one line saying what to do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from fedcore.cli.noderun import ACTIVATION_PATIENCE, Stop, run_node
from fedcore.errors import ConfigError

__all__ = ["INSECURE_WARNING", "add_deploy_commands", "node_command"]

console = Console(markup=False, highlight=False, soft_wrap=True)  # paths and [node] print as they are

INSECURE_WARNING = (
    "WARNING: fedcore node --insecure: no TLS and no node authentication. Anyone on the network can read "
    "this site's replies and pose as the SuperLink, and any process can pose as this node. Testing only."
)


def _certs_link(args: argparse.Namespace) -> int:
    from fedcore.cli.certs import link_certificates

    made = link_certificates(args.out, sans=args.san)
    console.print(f"SuperLink certificate for {', '.join(made.sans)} signed by a new CA in {args.out}:")
    console.print(f"  {made.ca_cert}  -> every site (`fedcore node --root-certificates`)")
    console.print(f"  {made.cert}, {made.key} (0600) -> flower-superlink --ssl-certfile/--ssl-keyfile")
    console.print(f"  {made.ca_key} (0600) -> keep offline; it signs SuperLink certificates")
    return 0


def _certs_node(args: argparse.Namespace) -> int:
    from fedcore.cli.certs import node_key

    made = node_key(args.out, args.name)
    console.print(f"SuperNode key pair of {args.name} (ECDSA P-384, OpenSSH format):")
    console.print(f"  {made.private} (0600) -> stays here: `fedcore node --auth-key {made.private}`")
    console.print(
        f"  {made.public} -> the federation operator, who runs `flwr supernode register {made.public.name} "
        "CONNECTION`"
    )
    return 0


def _insecure_warning(node_log: Path) -> None:
    """The warning, on stderr and in the site's ``node.log`` (where the operator looks later)."""
    print(INSECURE_WARNING, file=sys.stderr)
    node_log.parent.mkdir(parents=True, exist_ok=True)
    with node_log.open("a") as fh:
        fh.write(f"--- {datetime.now(UTC).isoformat()} {INSECURE_WARNING}\n")


def _security_args(args: argparse.Namespace, node_log: Path) -> list[str]:
    """TLS and node authentication, both required unless ``--insecure`` (then neither, loudly)."""
    from fedcore.cli.certs import check_node_key, check_root_certificate

    if args.insecure:
        given = [
            f
            for f, v in (("--root-certificates", args.root_certificates), ("--auth-key", args.auth_key))
            if v
        ]
        if given:
            raise ConfigError(
                f"--insecure with {' and '.join(given)}: drop --insecure to use TLS and the key"
            )
        _insecure_warning(node_log)
        return ["--insecure"]
    missing = [
        f"{flag} {hint}"
        for flag, value, hint in (
            ("--root-certificates", args.root_certificates, "CA.pem (the federation's CA, for TLS)"),
            (
                "--auth-key",
                args.auth_key,
                "NODE.key (from `fedcore certs node`, registered at the SuperLink)",
            ),
        )
        if value is None
    ]
    if missing:
        raise ConfigError(f"pass {' and '.join(missing)}, or --insecure for a test on one machine")
    check_root_certificate(args.root_certificates)
    check_node_key(args.auth_key)
    return [
        "--root-certificates",
        str(args.root_certificates.resolve()),
        "--auth-supernode-private-key",
        str(args.auth_key.resolve()),
    ]


def node_command(args: argparse.Namespace) -> list[str]:
    """Validate the site file, data, state and credentials; set up the gate; the supernode's argv."""
    from fedcore.clients.runtime import SiteRuntime
    from fedcore.config import load_site
    from fedcore.flower.gate import ENV_SITE_FILE, gate_path_dir

    runtime = SiteRuntime(load_site(args.site), args.state_dir)  # fails closed without a ledger
    folder = runtime.guard.paths.folder
    security = _security_args(args, folder / "node.log")
    bindir = Path(sys.executable).parent
    exe = shutil.which("flower-supernode", path=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    if exe is None:
        raise ConfigError("flower-supernode not found; install fedcore's environment (flwr)")
    superexec = Path(exe).parent / "flower-superexec"
    gate = gate_path_dir(folder, superexec if superexec.is_file() else None)
    args.node_log = folder / "node.log"  # for _node: where tracebacks and collapsed lines go
    if args.port is None:
        args.port, how = _free_port(), "a free port; --port fixes one"
    else:
        how = "--port"
    os.environ["PATH"] = os.pathsep.join([str(gate), str(Path(exe).parent), os.environ.get("PATH", "")])
    os.environ[ENV_SITE_FILE] = str(args.site.resolve())
    he_key = runtime.guard.paths.he_secret_key
    console.print(
        f"site {runtime.name}: {len(runtime.data.y_train)} training rows, schema OK, "
        f"ledger {runtime.guard.paths.ledger}\n"
        f"HE secret key: {he_key} ({'present' if he_key.is_file() else 'absent: HE jobs will be refused'})\n"
        f"client code: fedcore's installed ClientApp; submitted apps' own client code runs only if listed "
        f"in [node] trusted_apps ({len(runtime.site.trusted_apps)} listed; `fedcore app-digest APP`)\n"
        + ("connection: INSECURE" if args.insecure else f"connection: TLS (CA {args.root_certificates}), "
           f"node key {args.auth_key}")
        + f"\nruntime API (local, for this node's ClientApp processes): 127.0.0.1:{args.port} ({how})"
    )  # fmt: skip
    node_config = f"site-file='{args.site.resolve()}'"
    if args.state_dir is not None:
        node_config += f" state-dir='{args.state_dir.resolve()}'"
    cmd = [exe, "--superlink", args.superlink, "--node-config", node_config, "--port", str(args.port)]
    return cmd + security


def _free_port() -> int:
    """A port no one listens on now (the kernel's choice), for this node's local runtime API."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node(args: argparse.Namespace) -> int:
    stop = Stop()  # before anything starts: a SIGTERM during the checks ends the node cleanly
    stop.install()
    cmd = node_command(args)
    sys.stdout.flush()
    if stop.signum is not None:
        return 0
    outcome = run_node(cmd, Path(args.node_log), stop)
    if outcome.stopped:
        name = signal.Signals(stop.signum or signal.SIGTERM).name
        took = f"{outcome.seconds:.1f} s"
        print(f"INFO    fedcore node: stopped on {name}; every process it started ended ({took})")
        return 0
    rc = outcome.returncode
    if rc != 0 and outcome.seen["port"]:
        raise ConfigError(
            f"this node's local runtime port {args.port} is in use (another node on this machine?); leave "
            "--port out (a free port is taken) or pass a free one"
        )
    if rc != 0 and outcome.seen["refused"]:
        pub = args.auth_key.with_suffix(".pub").name if args.auth_key else None
        how = (
            f"send {pub} to the federation operator, who runs `flwr supernode register {pub} CONNECTION`"
            if pub
            else "check the SuperLink's address and whether it requires node authentication"
        )
        raise ConfigError(
            f"the SuperLink at {args.superlink} refused this node (Flower exit code 305): its key is not "
            f"registered there (it was tried for {ACTIVATION_PATIENCE:.0f} s, longer than a killed node "
            f"stays online); {how}, then start the node again"
        )
    return rc


def add_deploy_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    certs = sub.add_parser("certs", help="TLS certificates (operator) and SuperNode keys (each site)")
    csub = certs.add_subparsers(dest="certs_command", required=True)
    link = csub.add_parser("link", help="a CA and the SuperLink's TLS certificate (the federation operator)")
    link.add_argument("--out", type=Path, required=True, help="a folder for ca.pem, ca.key, superlink.*")
    link.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="HOST",
        help="a name or IP address the nodes dial (repeatable): --san link.example.org --san 10.0.0.5",
    )
    link.set_defaults(func=_certs_link)
    nk = csub.add_parser("node", help="this site's SuperNode key pair (run at the site; the key stays)")
    nk.add_argument("--out", type=Path, required=True, help="a folder for NAME.key (0600) and NAME.pub")
    nk.add_argument("--name", required=True, help="the key's name, e.g. the site's name")
    nk.set_defaults(func=_certs_node)

    node = sub.add_parser("node", help="run this site's node against a SuperLink (TLS, authenticated)")
    node.add_argument("--site", type=Path, required=True, help="this site's site file")
    node.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink's Fleet API")
    node.add_argument(
        "--port",
        type=int,
        help="local port of the node's runtime API (default: a free port, said in the log; several nodes "
        "can share a machine)",
    )
    node.add_argument("--root-certificates", type=Path, help="the federation's CA certificate (ca.pem)")
    node.add_argument(
        "--auth-key", type=Path, help="this node's private key (`fedcore certs node`), registered"
    )
    node.add_argument(
        "--insecure", action="store_true", help="no TLS, no node authentication: a test on one machine only"
    )
    node.add_argument(
        "--state-dir", type=Path, help="ledger and audit log folder (default .fedcore/ by the site file)"
    )
    node.set_defaults(func=_node)

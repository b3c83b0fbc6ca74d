"""``fedcore console`` (a site's web console: its figures, and decisions on jobs awaiting approval) and
``fedcore statement`` (a data-use statement).

``add_console_commands(sub)`` adds both to the CLI's subparsers. Bad input ends in one clean line
(a ``FedcoreError`` the CLI prints), never a traceback.
"""

from __future__ import annotations

import argparse
import re
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from fedcore.errors import ConfigError

__all__ = ["ServeSettings", "add_console_commands", "listen", "serve_settings"]

DEFAULT_PORT = 8765
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")


@dataclass(frozen=True)
class ServeSettings:
    """Where the console listens, the token every request needs (``None``: loopback, none asked for
    reading) and the one a decision needs (on loopback without a token file: made now, printed once)."""

    host: str
    port: int
    token: str | None
    generated: bool  # the token was made now (printed once)
    decision_token: str | None = None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..65535, got {value}")
    return value


def read_token(path: Path) -> str:
    """A token from a file only its owner can read (like an SSH key); ``ConfigError`` otherwise."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the token file {path} ({err}); give a readable --token-file") from err
    if mode & 0o077:
        raise ConfigError(
            f"token file {path} is readable by others (mode {mode & 0o777:o}); run `chmod 600 {path}`"
        )
    if not _TOKEN.fullmatch(text):
        raise ConfigError(
            f"token file {path} must hold one token of 16 to 512 characters from A-Z a-z 0-9 . _ ~ + / = - "
            f"(found {len(text)} characters); make one with "
            '`python -c "import secrets; print(secrets.token_urlsafe(32))"`'
        )
    return text


def serve_settings(host: str, port: int, token_file: Path | None) -> ServeSettings:
    """Loopback needs no token to read (one given is still required), but one to decide (made if
    absent); any other bind needs one for everything (made if absent)."""
    from fedcore.console.security import is_loopback

    if token_file is not None:
        token = read_token(token_file)
        return ServeSettings(host, port, token, False, token)
    if is_loopback(host):
        return ServeSettings(host, port, None, False, secrets.token_urlsafe(32))
    token = secrets.token_urlsafe(32)
    return ServeSettings(host, port, token, True, token)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one); ``ConfigError`` if it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port} ({err}); choose another --port or --host") from err
    return sock


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _console(args: argparse.Namespace) -> int:
    import uvicorn

    from fedcore.config import load_site
    from fedcore.console.app import create_app
    from fedcore.console.security import LOOPBACK_NAMES, is_loopback
    from fedcore.console.state import SiteReader

    reader = SiteReader(load_site(args.site), args.state_dir)
    reader.check()  # a missing or unreadable ledger or audit log: one clean line, before serving
    settings = serve_settings(args.host, args.port, args.token_file)
    hosts = LOOPBACK_NAMES if is_loopback(settings.host) else None
    app = create_app(
        reader, token=settings.token, allowed_hosts=hosts, decision_token=settings.decision_token
    )
    sock = listen(settings.host, settings.port)
    url = _url(settings.host, sock.getsockname()[1])
    print(f"fedcore console of site {reader.site.name!r}: {url}", flush=True)
    if settings.generated:
        print(f"token (shown once, keep it): {settings.token}", flush=True)
        print(f"open: {url}?token={settings.token}", flush=True)
    elif settings.token is None:  # loopback: anyone here reads, the token's holder decides
        print(
            f"to approve or deny jobs, open once (shown once): {url}?token={settings.decision_token}",
            flush=True,
        )
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, server_header=False, proxy_headers=False, lifespan="off"
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _statement(args: argparse.Namespace) -> int:
    from fedcore.config import load_site
    from fedcore.console.state import SiteReader
    from fedcore.console.statement import write_statement

    reader = SiteReader(load_site(args.site), args.state_dir)
    text = write_statement(reader, args.job_id, fmt=args.format, out=args.out)
    if args.out is None:
        sys.stdout.write(text)
    else:
        print(f"data-use statement of job {args.job_id!r} written to {args.out}")
    return 0


def add_console_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``console`` and ``statement`` to the CLI's subparsers."""
    con = sub.add_parser(
        "console", help="a site's web console: budget, jobs, audit chain; approve or deny pending jobs"
    )
    con.add_argument("site", type=Path, help="the site file")
    con.add_argument("--state-dir", type=Path, help="folder of the site's state (simulation: RUN_DIR/sites)")
    con.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need a token)"
    )
    con.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)"
    )
    con.add_argument(
        "--token-file",
        type=Path,
        help="a file (mode 600) holding the token every request must carry; without it a token is made "
        "and printed once (on loopback only decisions need it)",
    )
    con.set_defaults(func=_console)

    st = sub.add_parser("statement", help="a job's data-use statement for the site's committee")
    st.add_argument("site", type=Path, help="the site file")
    st.add_argument("job_id", help="the job's id (`fedcore ledger SITE_FILE` or the console lists them)")
    st.add_argument("--state-dir", type=Path, help="folder of the site's state (simulation: RUN_DIR/sites)")
    st.add_argument("--format", choices=("md", "html"), default="md", help="Markdown (default) or HTML")
    st.add_argument("--out", type=Path, help="write it to this file (default: print it)")
    st.set_defaults(func=_statement)

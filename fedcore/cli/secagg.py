"""``fedcore secagg keygen``: a site's secure-aggregation identity, and the line its peers list."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_secagg_commands"]


def _keygen(args: argparse.Namespace) -> int:
    from fedcore.secagg.keyfile import write_identity

    path, public = write_identity(args.name, args.out)
    print(f"identity of {args.name!r}: {path} (mode 0600; never leaves this site)")
    print("its public key; give it to every member out of band (each lists it under [secagg] members):")
    print(f'{args.name} = "{public}"')
    return 0


def add_secagg_commands(sub: Any) -> None:
    """``fedcore secagg keygen --name SITE --out DIR``."""
    sa = sub.add_parser("secagg", help="secure aggregation: a site's identity")
    ssub = sa.add_subparsers(dest="secagg_command", required=True)
    gen = ssub.add_parser(
        "keygen", help="make this site's Ed25519 identity; print the public key to exchange"
    )
    gen.add_argument("--name", required=True, help="the site's name ([site] name of its site file)")
    gen.add_argument("--out", type=Path, required=True, help="folder for NAME.ed25519 and NAME.ed25519.pub")
    gen.set_defaults(func=_keygen)

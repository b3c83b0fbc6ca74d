"""A site's secure-aggregation identity and member list on disk (``fedcore secagg keygen``).

``NAME.ed25519``: ``fedcore-secagg-identity v1 NAME HEX`` (the Ed25519 private key), created with
mode 0600 and refused when anyone but its owner may read it. ``NAME.ed25519.pub``: the public key
in hex, the line the operators exchange out of band (like the CA certificate) and list under
``[secagg] members`` in their site files. A member file: ``[members] name = "hex"``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from fedcore.config.reader import read_toml
from fedcore.errors import ConfigError
from fedcore.secagg.keys import Identity, Members

__all__ = ["load_identity", "load_members", "save_identity", "write_identity", "write_members"]

_TAG = "fedcore-secagg-identity v1"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def write_identity(name: str, out: Path) -> tuple[Path, str]:
    """A new identity for site ``name`` in ``out`` (refuses to replace one): (its file, public hex)."""
    if not name or any(ch.isspace() for ch in name):
        raise ConfigError(f"a site name has no spaces and is not empty, got {name!r}")
    path = out / f"{name}.ed25519"
    ident = save_identity(Identity.generate(name), path)
    public = ident.public_key.hex()
    (out / f"{name}.ed25519.pub").write_text(public + "\n")
    return path, public


def save_identity(ident: Identity, path: Path) -> Identity:
    """Write ``ident`` to ``path`` (mode 0600; an existing file is never replaced)."""
    if path.exists():
        raise ConfigError(f"{path} exists; an identity is never replaced (members hold its public key)")
    _write_private(path, f"{_TAG} {ident.name} {ident.private_key.hex()}\n")
    return ident


def load_identity(path: Path, name: str) -> Identity:
    """The identity in ``path`` for site ``name``; refused if readable by others, or another site's."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().split()
    except OSError as err:
        raise ConfigError(
            f"secure aggregation: no identity at {path} ({err.strerror}); run `fedcore secagg keygen "
            f"--name {name} --out DIR` and set [secagg] identity in the site file"
        ) from err
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: an identity must be readable by its owner only; run chmod 600 {path}")
    if len(text) != 4 or " ".join(text[:2]) != _TAG or text[2] != name or len(text[3]) != 64:
        raise ConfigError(f"{path}: not a fedcore secure-aggregation identity of site {name!r}")
    try:
        return Identity(name, bytes.fromhex(text[3]))
    except ValueError as err:
        raise ConfigError(f"{path}: the key is not hex ({err})") from err


def write_members(path: Path, keys: Mapping[str, str]) -> None:
    """A member file: ``[members] name = "hex"`` (sorted)."""
    lines = ["[members]", *(f'{n} = "{k}"' for n, k in sorted(keys.items()))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def load_members(pairs: tuple[tuple[str, str], ...] | None, path: Path | None) -> Members:
    """The member list from the site file's own table, else from its member file."""
    if pairs is None:
        if path is None or not path.is_file():
            raise ConfigError(
                "this site has no secure-aggregation member list: set [secagg] members (or members_file) "
                "in its site file, with the public keys the members exchanged out of band"
            )
        table = read_toml(path).get("members")
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise ConfigError(f"{path}: expected a [members] table of name = hex key")
        pairs = tuple(sorted((str(n), str(k)) for n, k in table.items()))
    try:
        return Members.of({n: bytes.fromhex(k) for n, k in pairs})
    except ValueError as err:
        raise ConfigError(f"member list: a key is not hex ({err}); fix the site file's member list") from err

"""TLS certificates and SuperNode keys for a real federation (``fedcore certs``).

Two parties, two commands, and no private key ever travels:

- the **federation operator** (who runs the SuperLink) makes a certificate authority and the
  SuperLink's server certificate, whose subject alternative names are exactly the addresses the
  nodes dial (``link_certificates(out, sans=["link.example.org", "10.0.0.5"])``): ``ca.pem`` goes
  to every site, ``ca.key``, ``superlink.key`` stay on the operator's machine;
- each **site** makes its SuperNode key pair (``node_key(out, name)``): ``NAME.pub`` goes to the
  operator, who registers it (``flwr supernode register NAME.pub CONNECTION``); ``NAME.key`` stays
  at the site and is given to ``fedcore node --auth-key``.

Formats are the ones Flower 1.42 reads: PEM certificates and a PKCS#8 PEM server key for
``flower-superlink --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``, and for node authentication an
ECDSA P-384 key in OpenSSH format (``flwr supernode register`` calls
``serialization.load_ssh_public_key``, ``flower-supernode`` calls ``load_ssh_private_key``; the same
files ``ssh-keygen -t ecdsa -b 384 -N "" -f NAME`` writes). Every private key is written 0600, created
with that mode (never readable by others, even for an instant), and never overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcore.errors import ConfigError

__all__ = [
    "LinkCertificates",
    "NodeKey",
    "check_node_key",
    "check_root_certificate",
    "link_certificates",
    "node_key",
]

_CA_DAYS = 3650
_SERVER_DAYS = 825  # the longest server-certificate lifetime common TLS clients accept


@dataclass(frozen=True)
class LinkCertificates:
    """What ``link_certificates`` wrote: the CA (certificate and key) and the SuperLink's pair."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    sans: tuple[str, ...]


@dataclass(frozen=True)
class NodeKey:
    """What ``node_key`` wrote: the site's private key (stays) and public key (to the operator)."""

    private: Path
    public: Path


def _write_new(path: Path, data: bytes, *, private: bool) -> None:
    """Create ``path`` (never overwrite); a private key is created with mode 0600 from the start."""
    if path.exists():
        raise ConfigError(f"{path} exists; refusing to overwrite a key or certificate (move it away first)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600 if private else 0o644)  # the umask may have narrowed the public mode


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        pass
    if not san or any(c in san for c in " /:@*") or san.startswith(".") or san.endswith("."):
        raise ConfigError(f"--san {san!r} is neither an IP address nor a host name (e.g. link.example.org)")
    return x509.DNSName(san)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def link_certificates(out: Path, *, sans: list[str], days: int = _SERVER_DAYS) -> LinkCertificates:
    """A CA and the SuperLink's certificate for the names and addresses in ``sans`` (at least one)."""
    if not sans:
        raise ConfigError("give the SuperLink's addresses: --san HOST (repeatable), e.g. --san 127.0.0.1")
    names = [_general_name(s) for s in sans]
    paths = LinkCertificates(out / "ca.pem", out / "ca.key", out / "superlink.pem", out / "superlink.key", ())
    for p in (paths.ca_cert, paths.ca_key, paths.cert, paths.key):
        if p.exists():
            raise ConfigError(f"{p} exists; refusing to overwrite a key or certificate (use an empty --out)")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedcore federation CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write_new(paths.ca_key, _pem_key(ca_key), private=True)
    _write_new(paths.key, _pem_key(key), private=True)
    _write_new(paths.ca_cert, ca.public_bytes(serialization.Encoding.PEM), private=False)
    _write_new(paths.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return LinkCertificates(paths.ca_cert, paths.ca_key, paths.cert, paths.key, tuple(sans))


def node_key(out: Path, name: str) -> NodeKey:
    """The site's SuperNode key pair: ``NAME.key`` (OpenSSH private, 0600) and ``NAME.pub``."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ConfigError(f"--name {name!r}: use letters, digits, '-', '_' or '.', e.g. the site's name")
    paths = NodeKey(out / f"{name}.key", out / f"{name}.pub")
    for p in (paths.private, paths.public):
        if p.exists():
            raise ConfigError(f"{p} exists; refusing to overwrite a key (a registered node keeps its key)")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write_new(paths.private, private, private=True)
    _write_new(paths.public, public + f" fedcore-node-{name}\n".encode(), private=False)
    return paths


def check_node_key(path: Path) -> None:
    """The node's private key: a readable OpenSSH EC key on a NIST curve, not readable by others."""
    if not path.is_file():
        raise ConfigError(f"--auth-key {path} is not a file; make one with `fedcore certs node --name SITE`")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"--auth-key {path} is readable by others (mode {mode:04o}); run `chmod 600 {path}`"
        )
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"--auth-key {path} is not an unencrypted OpenSSH private key ({err}); "
            "make one with `fedcore certs node --name SITE`"
        ) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in (
        "secp256r1",
        "secp384r1",
        "secp521r1",
    ):
        raise ConfigError(
            f"--auth-key {path} must be an ECDSA key on a NIST curve (P-384 recommended), "
            f"got {type(key).__name__}; make one with `fedcore certs node --name SITE`"
        )


def check_root_certificate(path: Path) -> None:
    """The CA certificate a node verifies the SuperLink with: a readable PEM certificate."""
    if not path.is_file():
        raise ConfigError(f"--root-certificates {path} is not a file; ask the operator for ca.pem")
    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as err:
        raise ConfigError(f"--root-certificates {path} is not a PEM certificate ({err})") from err

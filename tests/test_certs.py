"""``fedcore certs`` and ``fedcore node``'s credentials: formats Flower reads, modes, refusals."""

from __future__ import annotations

import argparse
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from fedcore.cli import main
from fedcore.cli.certs import check_node_key, check_root_certificate, link_certificates, node_key
from fedcore.errors import ConfigError

APP = Path(__file__).resolve().parents[1] / "examples" / "medical"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_link_certificate_names_the_given_addresses_and_chains_to_the_ca(tmp_path: Path) -> None:
    made = link_certificates(tmp_path, sans=["127.0.0.1", "link.example.org"])
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(made.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["link.example.org"]
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    key = serialization.load_pem_private_key(made.key.read_bytes(), None)
    assert key.public_key() == cert.public_key()  # type: ignore[union-attr]
    assert (_mode(made.key), _mode(made.ca_key), _mode(made.cert), _mode(made.ca_cert)) == (
        0o600,
        0o600,
        0o644,
        0o644,
    )


def test_link_certificates_refuse_bad_names_and_never_overwrite(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--san"):
        link_certificates(tmp_path / "a", sans=[])
    with pytest.raises(ConfigError, match=r"'https://x' is neither an IP address nor a host name"):
        link_certificates(tmp_path / "b", sans=["https://x"])
    assert not (tmp_path / "b").exists()  # nothing half-written
    made = link_certificates(tmp_path / "c", sans=["localhost"])
    before = made.key.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        link_certificates(tmp_path / "c", sans=["localhost"])
    assert made.key.read_bytes() == before


def test_node_key_is_what_flower_registers_and_loads(tmp_path: Path) -> None:
    made = node_key(tmp_path, "cleveland")
    assert _mode(made.private) == 0o600 and _mode(made.public) == 0o644
    registered = try_load_public_key(made.public)  # Flower's own parser behind `flwr supernode register`
    private = serialization.load_ssh_private_key(made.private.read_bytes(), None)  # flower-supernode's
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert registered == public_key_to_bytes(private.public_key())  # the key the node will present
    check_node_key(made.private)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        node_key(tmp_path, "cleveland")
    with pytest.raises(ConfigError, match=r"--name '\.\./x'"):
        node_key(tmp_path, "../x")


def test_node_key_checks_refuse_loose_modes_and_other_key_types(tmp_path: Path) -> None:
    made = node_key(tmp_path, "n")
    made.private.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\); run `chmod 600"):
        check_node_key(made.private)
    other = tmp_path / "ed.key"
    other.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    other.chmod(0o600)
    with pytest.raises(ConfigError, match="must be an ECDSA key on a NIST curve"):
        check_node_key(other)
    with pytest.raises(ConfigError, match="is not a file"):
        check_node_key(tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="is not a PEM certificate"):
        check_root_certificate(made.public)


def test_certs_commands_print_where_each_file_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "link", "--out", str(tmp_path / "l"), "--san", "127.0.0.1"]) == 0
    assert main(["certs", "node", "--out", str(tmp_path / "n"), "--name", "va"]) == 0
    out = capsys.readouterr().out
    assert "every site" in out and "flwr supernode register va.pub" in out
    assert sorted(p.name for p in (tmp_path / "n").iterdir()) == ["va.key", "va.pub"]


@pytest.fixture
def node_args(tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """``fedcore node`` arguments for cleveland with its ledger in place (PATH restored afterwards)."""
    from fedcore.config import load_site
    from fedcore.flower.gate import ENV_SITE_FILE
    from fedcore.site.guard import init_site_state

    monkeypatch.setenv("PATH", os.environ["PATH"])
    monkeypatch.delenv(ENV_SITE_FILE, raising=False)
    site = APP / "sites" / "cleveland.toml"
    init_site_state(load_site(site), tmp_path / "state")
    return argparse.Namespace(
        site=site, superlink="127.0.0.1:1", port=9094, state_dir=tmp_path / "state",
        insecure=False, root_certificates=None, auth_key=None,
    )  # fmt: skip


def test_node_requires_tls_and_a_key_unless_insecure(
    node_args: argparse.Namespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedcore.cli.deploy import node_command

    with pytest.raises(ConfigError, match=r"pass --root-certificates .* and --auth-key .*, or --insecure"):
        node_command(node_args)
    certs = link_certificates(tmp_path / "l", sans=["127.0.0.1"])
    key = node_key(tmp_path / "k", "cleveland")
    node_args.root_certificates, node_args.auth_key = certs.ca_cert, key.private
    cmd = node_command(node_args)
    assert "--insecure" not in cmd
    assert cmd[cmd.index("--root-certificates") + 1] == str(certs.ca_cert)
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key.private)
    node_args.insecure = True
    with pytest.raises(ConfigError, match="--insecure with --root-certificates and --auth-key"):
        node_command(node_args)
    assert "WARNING" not in capsys.readouterr().err


def test_insecure_node_says_so_on_stderr_and_in_node_log(
    node_args: argparse.Namespace, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedcore.cli.deploy import INSECURE_WARNING, node_command

    node_args.insecure = True
    cmd = node_command(node_args)
    assert "--insecure" in cmd and "--auth-supernode-private-key" not in cmd
    assert INSECURE_WARNING in capsys.readouterr().err.splitlines()
    log = (node_args.state_dir / "cleveland" / "node.log").read_text()
    assert INSECURE_WARNING in log


def test_node_cli_error_is_one_line(
    node_args: argparse.Namespace, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["node", "--site", str(node_args.site), "--superlink", "127.0.0.1:1"]
    assert main([*argv, "--state-dir", str(node_args.state_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedcore: error: pass --root-certificates"), err

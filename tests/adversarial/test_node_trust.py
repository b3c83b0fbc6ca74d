"""Finding 6: the node runs only code its operator trusts. Fast checks of the gate (no Flower
processes); ``tests/flower/test_node_gate.py`` (slow) runs it in front of a real SuperNode."""

from __future__ import annotations

import subprocess
import types
from pathlib import Path

import pytest

from fedcore.errors import ConfigError
from fedcore.flower.fab import app_digest, fab_digest
from fedcore.flower.gate import SHIM_NAME, GateError, decide, gate_path_dir, install_gate, trusted_apps
from tests.adversarial.coordinator import MEDICAL, make_site


def test_app_digest_is_the_hash_of_the_fab_flower_uploads() -> None:
    digest = app_digest(MEDICAL)
    assert len(digest) == 64 and digest == app_digest(MEDICAL)  # the FAB build is deterministic


# --- no Flower processes needed -------------------------------------------------------------------


def test_trust_list_parsing(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    text = site.read_text()
    assert trusted_apps(site) == frozenset()  # no [node] table: nothing trusted
    digest = "AB" * 32
    site.write_text(f'{text}\n[node]\ntrusted_apps = [" {digest} "]\n')
    assert trusted_apps(site) == {digest.lower()}
    for bad in ('trusted_apps = "abc"', 'trusted_apps = ["abc"]', "trusted_apps = [1]"):
        site.write_text(f"{text}\n[node]\n{bad}\n")
        with pytest.raises(ConfigError, match="trusted_apps"):
            trusted_apps(site)
    with pytest.raises(ConfigError, match="file not found"):
        trusted_apps(tmp_path / "missing.toml")


def test_decide_checks_the_bytes_not_the_announced_hash(tmp_path: Path) -> None:
    fab, other = b"the trusted FAB", b"another FAB"
    site = make_site(tmp_path)
    text = site.read_text()
    site.write_text(f'{text}\n[node]\ntrusted_apps = ["{fab_digest(fab)}"]\n')
    assert decide(fab, fab_digest(fab), str(site)).trusted
    assert not decide(other, fab_digest(fab), str(site)).trusted  # a trusted name on other bytes
    assert not decide(other, fab_digest(other), str(site)).trusted
    assert not decide(fab, fab_digest(fab), None).trusted  # FEDCORE_SITE_FILE unset: nothing trusted
    site.write_text(f'{text}\n[node]\ntrusted_apps = ["zz"]\n')
    broken = decide(fab, fab_digest(fab), str(site))
    assert not broken.trusted and isinstance(broken.error, ConfigError)


def test_gate_refuses_to_patch_a_flower_whose_internals_moved() -> None:
    fake = types.ModuleType("fake_run_clientapp")
    exec(
        "def run_clientapp():\n    pull_task_input(); install_from_fab(); install_app_dependencies()\n",
        fake.__dict__,
    )
    originals = {}
    for name in ("pull_task_input", "install_from_fab", "install_app_dependencies"):
        originals[name] = lambda *a: None
        setattr(fake, name, originals[name])
    with pytest.raises(GateError, match="get_load_client_app_fn is missing"):
        install_gate(fake)
    fake.__dict__["get_load_client_app_fn"] = lambda *a: None  # present, but run_clientapp no longer calls it
    with pytest.raises(GateError, match="get_load_client_app_fn is missing or no longer used"):
        install_gate(fake)
    assert all(getattr(fake, n) is f for n, f in originals.items()), "a refused gate patched something"


def test_shim_runs_the_gate_with_flwr_clientapps_arguments(tmp_path: Path) -> None:
    gate_dir = gate_path_dir(tmp_path)
    out = subprocess.run(
        [str(gate_dir / SHIM_NAME), "--help"], capture_output=True, timeout=120, check=True, text=True
    )
    assert out.stdout.startswith("usage: flwr-clientapp"), out.stdout
    assert "--runtime-api-address" in out.stdout and "--token" in out.stdout

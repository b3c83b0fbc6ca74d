"""The medical app runs unchanged on Flower's Deployment Engine, secured as a real federation is: a
SuperLink with TLS and SuperNode authentication, one `fedcore node` per hospital (separate processes on
loopback, each with its registered key, the federation's CA and its copy of the HE secret key), the HE
job submitted with ``flwr run``. Its accuracy is the simulation's; a node whose key is not registered
is refused with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedcore.cli.certs import link_certificates, node_key
from fedcore.he import init_keys
from fedcore.he.params import params_for_sites
from tests.flower.federation import BIN, free_port, processes, register_node, write_flwr_home

pytestmark = [pytest.mark.slow, pytest.mark.he]

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "examples" / "medical"
HOSPITALS = ("cleveland", "hungary", "switzerland", "va")
ROUNDS, SEED = 2, 42


@dataclass
class Federation:
    env: dict[str, str]
    link: str  # 127.0.0.1:PORT
    ca: Path
    keys: Path  # the HE key ceremony's folder (public.ctx for the coordinator)
    logs: Path
    state: Path


def _fedcore(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "fedcore"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _hospital_state(site: Path, state: Path, he_secret: Path) -> None:
    """A new hospital, once: its ledger and audit log (`fedcore ledger SITE --init`, in-process here to
    spare a CLI start) and its copy of the HE secret key (0600)."""
    from fedcore.config import load_site
    from fedcore.site.guard import init_site_state

    paths = init_site_state(load_site(site), state)
    key = paths.folder / "he_secret.ctx"  # the site's default he_secret_key, in its own 0700 folder
    shutil.copyfile(he_secret, key)
    key.chmod(0o600)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Federation]:
    """One federation for the module's tests; every process is stopped however they end."""
    tmp_path = tmp_path_factory.mktemp("federation")
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    link_port = free_port()
    certs = link_certificates(tmp_path / "link", sans=["127.0.0.1", "localhost"])
    write_flwr_home(tmp_path / "flwr", link_port, root_certificates=certs.ca_cert)
    keys = tmp_path / "he-keys"
    init_keys(keys, params=params_for_sites(len(HOSPITALS)))  # `fedcore keys init --max-sites 4`
    fed = Federation(
        env, f"127.0.0.1:{link_port}", certs.ca_cert, keys, tmp_path / "logs", tmp_path / "state"
    )
    with processes(fed.logs) as procs:
        procs.superlink(env, link_port, tmp_path / "state.db", certs)
        for h in HOSPITALS:
            site = APP / "sites" / f"{h}.toml"
            _hospital_state(site, fed.state, keys / "secret.ctx")
            made = node_key(tmp_path / "nodes" / h, h)  # at the hospital; only the .pub leaves
            register_node(env, made.public)  # the operator registers it
            procs.start(
                h, env, "fedcore", "node", "--site", str(site), "--superlink", fed.link,
                "--root-certificates", str(certs.ca_cert), "--auth-key", str(made.private),
                "--port", str(free_port()), "--state-dir", str(fed.state),
            )  # fmt: skip
        yield fed


def test_he_job_on_secured_superlink_matches_simulation(federation: Federation, tmp_path: Path) -> None:
    fed = federation
    out = tmp_path / "run"
    sets = f'job.rounds={ROUNDS};job.seed={SEED};privacy.he.public_key="{fed.keys / "public.ctx"}"'
    cmd = [
        str(BIN / "flwr"),
        "run",
        str(APP),
        "local",
        "--stream",
        "--run-config",
        f"job='jobs/he.toml' out-dir='{out}' set='{sets}'",
    ]
    proc = subprocess.run(cmd, env=fed.env, capture_output=True, timeout=420, check=False)
    log_tail = proc.stdout.decode()[-3000:] + proc.stderr.decode()[-3000:]
    assert proc.returncode == 0, f"{log_tail}\nlogs in {fed.logs}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rounds"]) == ROUNDS
    final = metrics["rounds"][-1]["evaluate"]
    assert sorted(final) == sorted(HOSPITALS), f"sites that evaluated: {sorted(final)}; logs in {fed.logs}"
    deployed = sum(m["accuracy"] for m in final.values()) / len(final)
    summary = json.loads((out / "summary.json").read_text())  # a deployment run reports too
    assert summary["privacy"]["he"] is True and (out / "report.md").is_file()
    assert summary["mean_site_accuracy"] == pytest.approx(deployed, abs=1e-9)
    assert not list(out.rglob("*secret*"))  # the coordinator's side holds no secret key

    # the same job, rounds and seed in simulation: the deployment must not change the result
    from fedcore.harness.runner import run_app

    simulated = run_app(APP, job="he", out_dir=tmp_path / "sim", rounds=ROUNDS, seed=SEED, baselines=False)
    assert deployed == pytest.approx(simulated["mean_site_accuracy"], abs=0.01)
    assert deployed > 0.5  # and it is a model, not a coin

    # each hospital's node ran behind the gate over TLS, and kept the model it decrypted
    assert sorted(p.parent.name for p in fed.state.glob("*/audit.db")) == sorted(HOSPITALS)
    assert all((fed.state / h / "model.npz").is_file() for h in HOSPITALS)
    node_log = (fed.logs / "cleveland.log").read_text()
    assert "fedcore gate: running fedcore's built-in ClientApp" in node_log  # the app is not trusted
    assert "connection: TLS" in node_log and "INSECURE" not in node_log


def test_unregistered_node_is_refused_with_one_line(federation: Federation, tmp_path: Path) -> None:
    fed = federation
    site = APP / "sites" / "cleveland.toml"
    state = tmp_path / "intruder-state"
    _hospital_state(site, state, fed.keys / "secret.ctx")
    made = node_key(tmp_path / "intruder", "intruder")  # a valid key, never registered
    started = time.monotonic()
    proc = _fedcore(
        fed.env, "node", "--site", str(site), "--superlink", fed.link, "--root-certificates", str(fed.ca),
        "--auth-key", str(made.private), "--port", str(free_port()), "--state-dir", str(state), timeout=360,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fedcore: error: the SuperLink at {fed.link} refused this node"), last
    assert "flwr supernode register intruder.pub" in last
    assert "Traceback" not in proc.stdout + proc.stderr
    assert time.monotonic() - started < 300  # it is tried for 90 s: a killed node's old run looks the same

"""docs/deployment.md, run as written: the executable guide (slow).

On one machine, with only the replacements the guide's table lists: the operator's certificates and
SuperLink (TLS, node authentication), four hospitals (ledger, key, registration, ``fedcore node`` with
default flags: several nodes share the machine), the differentially private job. In the middle of it
one hospital's ``fedcore node`` is killed with SIGKILL (nothing of its tree may survive 15 s) and
started again with the guide's command; the job is stopped with the guide's ``flwr stop``, its log ends
with the command that continues it, and the guide's resume command takes it to its last round. Then:
the model is scored, every hospital's ledger holds the job's plan at most once (nothing charged twice),
SIGTERM stops every node within 15 s, and no process any block started is left (a scan of /proc).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.flower.federation import BIN, free_port, wait_for_port
from tests.flower.guide import (
    GUIDE,
    MARKER,
    REPO,
    Block,
    Runner,
    blocks,
    marked,
    replaced_values,
    stop_all,
    substitute,
)
from tests.flower.guide import wait_for as wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # ~15 min on a loaded 2-core machine

APP = REPO / "examples" / "medical"
HOSPITALS = ("cleveland", "hungary", "switzerland", "va")
KILLED = "hungary"
ROUND = 15 * 60  # a round on a loaded 2-core machine takes 1-3 minutes; this is room, not a target
# what the test replaces, exactly the guide's table (checked)
REPLACED = {
    "link.example.org", "10.0.0.5", "0.0.0.0", "9093", "/etc/fedcore/link", "/var/lib/flwr", "/srv/fedcore",
    "~/.flwr", "/etc/fedcore/site.toml", "/etc/fedcore", "/var/lib/fedcore", "cleveland", "examples/medical",
    "RUN_ID",
}  # fmt: skip


def _json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):  # not written yet, or being written
        return {}


def _checkpoint_round(out: Path) -> int:
    from fedcore.flower.checkpoint import checkpoint_path, load_checkpoint

    try:
        return load_checkpoint(out).round if checkpoint_path(out).is_file() else 0
    except Exception:  # being replaced (written atomically, read while renamed): try again
        return 0


class Federation:
    """The parties' folders and the replacements each one's blocks get."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.op = root / "operator"
        for folder in ("link", "flwr-state", "srv"):  # as an administrator makes /var/lib/flwr, /srv/...
            (self.op / folder).mkdir(parents=True)
        self.out = self.op / "srv" / "runs" / "dp-1"
        self.common = {
            "link.example.org": "127.0.0.1", "10.0.0.5": "127.0.0.1", "0.0.0.0": "127.0.0.1",
            "9093": str(port), "examples/medical": str(APP),
        }  # fmt: skip

    def operator(self, **more: str) -> dict[str, str]:
        op = self.op
        return {
            **self.common, "/etc/fedcore/link": str(op / "link"), "/var/lib/flwr": str(op / "flwr-state"),
            "/srv/fedcore": str(op / "srv"), "~/.flwr": str(op / "flwr-home"), **more,
        }  # fmt: skip

    def hospital(self, name: str) -> dict[str, str]:
        home = self.root / name
        (home / "etc").mkdir(parents=True, exist_ok=True)
        return {
            **self.common, "/etc/fedcore/site.toml": str(APP / "sites" / f"{name}.toml"),
            "/etc/fedcore": str(home / "etc"), "/var/lib/fedcore": str(home / "state"), "cleveland": name,
        }  # fmt: skip


def test_the_guide_runs_as_written(tmp_path: Path, shared_data: Path) -> None:
    text = GUIDE.read_text()
    guide = blocks(text)
    assert set(replaced_values(text)) == REPLACED, "the guide's table and this test replace different values"
    fed = Federation(tmp_path, free_port())
    marker = uuid.uuid4().hex
    env = {
        **os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
        "FLWR_HOME": str(fed.op / "flwr-home"), MARKER: marker, "OPENBLAS_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    runner = Runner(env, tmp_path / "logs")
    runner.logs.mkdir()
    try:
        _operator_setup(runner, guide, fed)
        for h in HOSPITALS:
            _hospital_setup(runner, guide, fed, h)
        for h in HOSPITALS:
            runner.start(guide["node"], fed.hospital(h), cwd=fed.root / h, tag=f"node:{h}")
        for h in HOSPITALS:
            _wait_registered(runner, h)
        run_id = _job_with_faults(runner, guide, fed, marker)
        resumed = runner.run(guide["resume"], fed.operator(), cwd=fed.op, timeout=4 * ROUND)
        _check_outcome(fed, resumed, runner, guide)
        _stop_nodes(runner, marker)
        assert run_id
    finally:
        left = stop_all(runner, marker)
    assert not left, f"processes left running after SIGTERM: {left}"
    assert not marked(marker), f"processes left after SIGKILL: {marked(marker)}"


def _operator_setup(runner: Runner, guide: dict[str, Block], fed: Federation) -> None:
    runner.run(guide["link-certs"], fed.operator(), cwd=fed.op)
    runner.start(guide["superlink"], fed.operator(), cwd=fed.op, tag="superlink")
    conn = guide["connection"]
    target = Path(substitute(conn.path, fed.operator()))  # ~/.flwr/config.toml, as the guide says
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(substitute(conn.text, fed.operator()))
    wait_for_port(fed.port, timeout=180)


def _hospital_setup(runner: Runner, guide: dict[str, Block], fed: Federation, name: str) -> None:
    home = fed.root / name
    values = fed.hospital(name)
    runner.run(guide["ledger"], values, cwd=home)
    runner.run(guide["node-key"], values, cwd=home)
    shutil.copyfile(fed.op / "link" / "ca.pem", home / "etc" / "ca.pem")  # the operator sends it
    shutil.copyfile(home / "etc" / f"{name}.pub", fed.op / f"{name}.pub")  # the hospital sends its .pub
    registered = runner.run(guide["register"], fed.operator(cleveland=name), cwd=fed.op, timeout=180)
    assert "registered" in registered, registered


def _wait_registered(runner: Runner, name: str) -> None:
    log = f"node:{name}"
    wait(f"the node of {name} to be accepted", lambda: "SuperNode ID" in runner.log(log), 300,
         context=lambda: runner.log(log)[-3000:])  # fmt: skip
    first = runner.log(log)
    assert "runtime API (local, for this node's ClientApp processes): 127.0.0.1:" in first
    assert "Traceback" not in first, first


def _job_with_faults(runner: Runner, guide: dict[str, Block], fed: Federation, marker: str) -> str:
    """The job; after its first round a node is killed and restarted; after its second it is stopped."""
    job = runner.start(guide["job"], fed.operator(), cwd=fed.op, tag="job")
    context = lambda: runner.log("job")[-4000:]  # noqa: E731
    wait("flwr run to print the run id", lambda: "Successfully started run" in runner.log("job"), 300,
         context=context)  # fmt: skip
    run_id = re.findall(r"Successfully started run (\d+)", runner.log("job"))[0]
    wait("round 1's checkpoint", lambda: _checkpoint_round(fed.out) >= 1, ROUND, context=context)
    node = next(p for tag, p in runner.started if tag == f"node:{KILLED}")
    os.kill(node.pid, signal.SIGKILL)  # a crash: nothing runs in fedcore node to clean up
    _wait_gone(marker, f"node:{KILLED}", 15)  # the kernel kills its SuperNode, and so on down
    runner.start(guide["node"], fed.hospital(KILLED), cwd=fed.root / KILLED, tag=f"node:{KILLED}")
    wait("round 2's checkpoint", lambda: _checkpoint_round(fed.out) >= 2 or job.poll() is not None, ROUND,
         context=context)  # fmt: skip
    if job.poll() is None:
        runner.run(guide["stop"], fed.operator(RUN_ID=run_id), cwd=fed.op, timeout=180)
    wait("the stopped job's flwr run to end", lambda: job.poll() is not None, 300, context=context)
    summary = fed.out / "summary.json"  # flwr stop ends the log stream before the coordinator's last line
    wait("the stopped coordinator to write how to continue", lambda: "failed" in _json(summary), 120,
         context=context)  # fmt: skip
    line = _json(summary)["failed"]
    assert "Continue it with: " in line, line
    said = line.split("Continue it with: ", 1)[1].strip()
    documented = " ".join(guide["resume"].text.split()).replace("examples/medical prod", "APP_DIR CONNECTION")
    documented = documented.replace("/srv/fedcore", str(fed.op / "srv"))
    assert said == documented, f"the job says {said!r}; the guide documents {documented!r}"
    return run_id


def _check_outcome(fed: Federation, resumed: str, runner: Runner, guide: dict[str, Block]) -> None:
    from fedcore.clients.evaluation import evaluate_site
    from fedcore.config import load_site
    from fedcore.data import prepare_site
    from fedcore.models import build_model, set_arrays
    from fedcore.site.guard import state_paths
    from fedcore.site.ledger import PrivacyLedger

    assert "Traceback" not in resumed, resumed[-4000:]
    metrics = json.loads((fed.out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3], "the resumed job did not reach round 3"
    assert sorted(metrics["rounds"][-1]["train"]) == sorted(HOSPITALS), metrics["rounds"][-1]["rejected"]
    with np.load(fed.out / "model.npz") as z:
        arrays = tuple(z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1])))
    sites = [load_site(APP / "sites" / f"{h}.toml") for h in HOSPITALS]
    datas = [prepare_site(s) for s in sites]
    model = build_model({"name": "logreg"}, len(datas[0].features), seed=0)
    set_arrays(model, tuple(np.asarray(a, dtype=np.float64) for a in arrays))
    accuracy = float(np.mean([evaluate_site(model, d)["accuracy"] for d in datas]))
    assert 0.55 < accuracy <= 1.0, f"the deployed DP model scores {accuracy:.3f}: not a model"
    admission = json.loads((fed.out / "admission.json").read_text())
    named = {site for r in metrics["rounds"] for site in r["rejected"]}
    assert named <= set(HOSPITALS), f"a site missing from a round is not named by its site name: {named}"
    for site in sites:
        ledger = PrivacyLedger(state_paths(site, fed.root / site.name / "state").ledger, site=site.name)
        charged = ledger.job_charge(metrics["job_id"])
        planned = float(admission[site.name]["plan"]["epsilon"])
        assert charged is not None and charged[0] <= planned + 1e-9, (
            f"{site.name}: {charged} > plan {planned}"
        )
        shown = runner.run(guide["ledger-show"], fed.hospital(site.name), cwd=fed.root / site.name)
        assert site.name in shown


def _stop_nodes(runner: Runner, marker: str) -> None:
    """SIGTERM to each hospital's fedcore node: it and all it started end within 15 s."""
    for tag, proc in runner.started:
        if tag.startswith("node:") and proc.poll() is None:
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _wait_gone(marker, tag, 15)
            assert proc.wait(timeout=5) == 0, f"{tag} exited {proc.returncode} on SIGTERM"
            assert time.monotonic() - t0 < 15


def _wait_gone(marker: str, tag: str, timeout: float) -> None:
    """Until no process started by the block tagged ``tag`` (or by its children) is alive."""
    mark = f"{marker}:{tag}"
    wait(
        f"every process of {tag} to end", lambda: not marked(mark), timeout, context=lambda: str(marked(mark))
    )

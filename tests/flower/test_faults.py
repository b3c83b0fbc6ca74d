"""A site that dies mid-job does not stop it: on a real SuperLink with four real ``fedcore node``
processes, one node is SIGKILLed after round 1; round 2 goes on with the other three (min_sites 3),
the restarted node (a new node id) rejoins for round 3, and the killed site's ledger holds only what
it released, each training round charged once, when answered. Flower notices the dead node after
two missed heartbeats (~60 s). A killed coordinator resumes from its checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from fedcore.config import load_site
from fedcore.flower.checkpoint import load_checkpoint
from fedcore.site.guard import init_site_state
from fedcore.site.ledger import PrivacyLedger
from tests.flower.federation import BIN, Processes, free_port, processes, write_flwr_home

# long: CI runs the executable guide (tests/flower/test_guide.py), which kills and resumes the same way
pytestmark = [pytest.mark.slow, pytest.mark.long]

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "examples" / "medical"
HOSPITALS = ("cleveland", "hungary", "switzerland", "va")
VICTIM = "va"


class Federation(NamedTuple):
    env: dict[str, str]
    procs: Processes  # the SuperLink first, then the hospitals' nodes, in HOSPITALS order
    start_node: Callable[[str], None]  # start (again) a hospital's node


@pytest.fixture
def federation(tmp_path: Path, shared_data: Path) -> Iterator[Federation]:
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    link_port = free_port()
    write_flwr_home(tmp_path / "flwr", link_port)
    state = tmp_path / "state"
    with processes(tmp_path / "logs") as procs:
        try:
            procs.superlink(env, link_port, tmp_path / "state.db")
            time.sleep(3)

            def start_node(hospital: str) -> None:  # insecure: a restarted node gets a new node id
                procs.start(
                    hospital, env, "fedcore", "node", "--site", str(APP / "sites" / f"{hospital}.toml"),
                    "--superlink", f"127.0.0.1:{link_port}", "--insecure", "--port", str(free_port()),
                    "--state-dir", str(state),
                )  # fmt: skip

            for h in HOSPITALS:
                init_site_state(load_site(APP / "sites" / f"{h}.toml"), state)  # `fedcore ledger --init`
                start_node(h)
            yield Federation(env, procs, start_node)
        finally:  # a node's flower-superexec outlives its stopped node and keeps starting ClientApps:
            _kill([d for p in procs.procs for d in _descendants(p.pid)[1:]])  # stop them first


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a node: flower-supernode, its superexec, ClientApps)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def _kill(pids: list[int]) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _ledger(state: Path, site: str) -> tuple[list[tuple[str, int]], list[tuple[str, float]]]:
    """(the releases, the charges) in a site's ledger."""
    with sqlite3.connect(state / site / "ledger.db") as conn:
        releases = sorted((str(k), int(r)) for k, r in conn.execute("SELECT kind, round FROM releases"))
        charges = [(str(j), float(e)) for j, e in conn.execute("SELECT job_id, epsilon FROM charges")]
    return releases, charges


def _charged(state: Path, site: str, job_id: str) -> float:
    """The job's charges at ``site``, composed (one charge per answered training round)."""
    charged = PrivacyLedger(state / site / "ledger.db", site=site).job_charge(job_id)
    assert charged is not None, f"{site} charged nothing for {job_id}"
    return charged[0]


def test_a_site_killed_mid_job_does_not_stop_it_is_charged_only_for_its_releases_and_rejoins(
    federation: Federation, tmp_path: Path
) -> None:
    env, procs, start_node = federation
    out, state = tmp_path / "run", tmp_path / "state"
    sets = "job.rounds=3;job.min_sites=3;train.local_steps=5"
    config = f"out-dir='{out}' job='jobs/dp.toml' set='{sets}'"
    cmd = [str(BIN / "flwr"), "run", str(APP), "local", "--stream", "--run-config", config]
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    victim = procs.procs[1 + HOSPITALS.index(VICTIM)]  # the link was started first
    deadline = time.monotonic() + 480  # generous: a loaded CI machine is slow, an idle one ~30 s
    try:
        while not (out / "checkpoint.npz").is_file() or load_checkpoint(out).round < 1:
            assert run.poll() is None and time.monotonic() < deadline, "round 1 did not finish"
            time.sleep(0.5)
        _kill(_descendants(victim.pid))  # after round 1, without a word to anyone
        killed_after = load_checkpoint(out).round
        start_node(VICTIM)  # and back at once, under a new node id, on the same ledger
        output, _ = run.communicate(timeout=480)
    finally:
        run.kill()  # no-op once it has finished
    assert run.returncode == 0, output.decode()[-4000:]
    assert victim.poll() is not None and killed_after == 1

    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    first, second, third = metrics["rounds"]
    assert sorted(first["train"]) == sorted(HOSPITALS)
    assert sorted(second["train"]) == sorted(set(HOSPITALS) - {VICTIM})  # round 2 went on with three
    assert sorted(third["train"]) == sorted(HOSPITALS)  # the restarted node rejoined for round 3
    dead = {name for r in metrics["rounds"] for name in r["rejected"]}
    assert dead <= {VICTIM}, dead  # Flower's error for a dead node is named as its site, not node-<id>
    job_id = metrics["job_id"]
    plans = {s: a["plan"]["epsilon"] for s, a in metrics["admission"].items()}
    for site in HOSPITALS:
        releases, charges = _ledger(state, site)
        trains = [r for k, r in releases if k == "train"]
        assert [j for j, _ in charges] == [job_id] * len(trains)  # one charge per training round answered
        if site != VICTIM:
            assert _charged(state, site, job_id) == pytest.approx(plans[site], rel=5e-3)  # the whole plan
        elif len(trains) == 2:
            assert _charged(state, site, job_id) < 0.95 * plans[site]  # rounds 1 and 3: less than planned
        answered = {(k, r["round"]) for r in metrics["rounds"] for k in ("train", "evaluate") if site in r[k]}
        assert answered <= set(releases)  # every answer the coordinator holds was recorded and charged
        if site != VICTIM:
            assert releases == sorted((k, r) for k in ("evaluate", "train") for r in (1, 2, 3))
    victim_releases, _ = _ledger(state, VICTIM)
    # rounds 1 and 3, and at most the round-2 message it may have taken in the instant before it died
    both = {("evaluate", 1), ("train", 1), ("evaluate", 3), ("train", 3)}
    assert both <= set(victim_releases) <= both | {("train", 2)}


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def test_a_killed_coordinator_resumes_on_the_real_superlink_and_no_site_charges_twice(
    federation: Federation, tmp_path: Path
) -> None:
    env, procs, _ = federation
    out, state = tmp_path / "run", tmp_path / "state"
    job = "job='jobs/dp.toml' set='job.rounds=2;train.local_steps=5'"
    flwr = [str(BIN / "flwr"), "run", str(APP), "local", "--stream", "--run-config"]
    first = subprocess.Popen([*flwr, f"out-dir='{out}' {job}"], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 480
    try:
        while not (out / "checkpoint.npz").is_file() or load_checkpoint(out).round < 1:
            assert first.poll() is None and time.monotonic() < deadline, "round 1 did not finish"
            time.sleep(0.5)
        coordinator = [p for p in _descendants(procs.procs[0].pid) if "flwr-serverapp" in _cmdline(p)]
        assert coordinator, "no ServerApp process under the SuperLink"
        _kill(coordinator)  # the coordinator dies after round 1, for real
        with contextlib.suppress(subprocess.TimeoutExpired):
            first.wait(timeout=120)
    finally:
        first.kill()
    ckpt = load_checkpoint(out)
    assert ckpt.round == 1 and not (out / "metrics.json").exists()
    again = subprocess.run(
        [*flwr, f"resume='{out}' {job}"], env=env, capture_output=True, timeout=480, check=False
    )
    assert again.returncode == 0, (again.stdout + again.stderr).decode()[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["job_id"] == ckpt.request.job_id and [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all(sorted(r["train"]) == sorted(HOSPITALS) for r in metrics["rounds"])
    plans = {s: a["plan"]["epsilon"] for s, a in metrics["admission"].items()}
    for site in HOSPITALS:
        releases, charges = _ledger(state, site)
        assert releases == sorted((k, r) for k in ("evaluate", "train") for r in (1, 2))  # each once
        assert [j for j, _ in charges] == [ckpt.request.job_id] * 2  # rounds 1 and 2, each charged once
        assert _charged(state, site, ckpt.request.job_id) == pytest.approx(plans[site], rel=5e-3)

"""A coordinator that dies mid-job resumes from its checkpoint and ends where an uninterrupted run
ends; the sites answer the resumed job under the plan they admitted and charge nothing twice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcore.aggregators import ClientUpdate, FedYogi, aggregator_state, load_aggregator_state
from fedcore.clients.runtime import SiteRuntime
from fedcore.config import JobRequest, load_job
from fedcore.errors import ConfigError, JobStoppedError, UpdateError
from fedcore.flower.checkpoint import Checkpoint, load_checkpoint, save_admission, save_checkpoint
from fedcore.harness.runner import resume_run, run_app
from fedcore.site.audit import AuditLog
from tests.adversarial.coordinator import Coordinator, Refused, job, make_site
from tests.flower.federation import BIN

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "examples" / "medical"
HOSPITALS = ("cleveland", "hungary", "switzerland", "va")


def _request(*sets: str) -> JobRequest:
    return JobRequest("default-abc", 4, load_job(APP / "jobs" / "default.toml", list(sets)))


def test_checkpoint_round_trip_is_exact_and_atomic(tmp_path: Path) -> None:
    opt = FedYogi()
    update = ClientUpdate((np.full(3, 0.25), np.ones((2, 2))), num_examples=5)
    opt.aggregate([update], server_round=1)
    model = (np.arange(3, dtype=np.float32) / 7, np.ones((2, 2), dtype=np.float32))
    ckpt = Checkpoint(_request(), 2, model, optimizer=aggregator_state(opt), history=[{"round": 1}])
    save_checkpoint(tmp_path, ckpt)
    save_checkpoint(tmp_path, ckpt)  # written over, never beside: one file, no temporary left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]
    back = load_checkpoint(tmp_path)
    assert back.request == ckpt.request and back.round == 2 and back.history == [{"round": 1}]
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(back.model, model, strict=True))
    again = FedYogi()
    load_aggregator_state(again, back.optimizer)  # the moments come back bit for bit
    steps = [o.aggregate([update], server_round=2).step for o in (opt, again)]
    assert all(np.array_equal(a, b) for a, b in zip(*steps, strict=True))
    assert back.he_held == {} and back.he_at is None  # a plaintext job keeps no HE catch-up
    held = {2: b"\x00sum of round 2", 1: b"round 1"}
    save_checkpoint(tmp_path, replace(ckpt, he_held=held, he_at={"cleveland": 2, "va": 0}))
    back_he = load_checkpoint(tmp_path)
    assert back_he.he_held == held and back_he.he_at == {"cleveland": 2, "va": 0}
    with pytest.raises(ConfigError, match="settings changed"):
        back.resumed_request(load_job(APP / "jobs" / "default.toml", ["train.lr=0.5"]))
    (tmp_path / "checkpoint.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="unreadable"):
        load_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="no checkpoint"):
        load_checkpoint(tmp_path / "elsewhere")


def test_a_restarted_site_answers_a_released_round_with_the_same_reply_and_charges_nothing(
    tmp_path: Path,
) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    req = job("dp", job_id="restart")
    assert c.admit(req)["accepted"]
    g = c.model(req)
    delta, _ = c.train(req, 1, g)
    scores = c.evaluate(req, 1, g)
    SiteRuntime._cache.clear()  # the site process restarts: what it keeps is on disk
    assert c.admit(req)["accepted"]  # the resumed job: the same id and digest, the same plan
    again, _ = c.train(req, 1, c.model(req, seed=3))  # whatever model a coordinator sends
    assert all(np.array_equal(a, b) for a, b in zip(delta, again, strict=True))
    assert c.evaluate(req, 1, g) == scores
    with pytest.raises(Refused, match="settings differ"):  # another job under the id gets nothing
        c.train(job("dp", "train.lr=0.5", job_id="restart"), 1, g)
    ledger = c.site.guard.ledger.summary()
    assert [ch.job_id for ch in ledger.charges] == ["restart"]  # round 1's charge; the replays cost nothing
    kinds = [r.kind for r in c.site.guard.audit.records()]
    assert kinds.count("release") == 2 and kinds.count("replay") == 2


def test_a_round_released_but_never_sent_is_answered_once_and_a_concurrent_request_is_refused(
    tmp_path: Path,
) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    req = job("dp", job_id="unsent")
    assert c.admit(req)["accepted"]
    g = c.model(req)
    c.train(req, 1, g)
    c.site.authorize(req, "train", 2, actor="coordinator")  # the site stopped here: recorded, never sent
    with c.site.replies.claim(req.job_id, "train") as mine:  # another request of this job in work
        assert mine
        with pytest.raises(Refused, match="being answered"):
            c.train(req, 2, g)
    first, _ = c.train(req, 2, g)  # answered now: the recorded release (and charge) covers it
    again, _ = c.train(req, 2, c.model(req, seed=4))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))  # never computed twice
    with pytest.raises(Refused, match="answered already"):
        c.train(req, 1, g)  # round 1 was sent (round 2's reply replaced it): refused, not recomputed
    assert len(c.site.guard.ledger.summary().charges) == 2  # rounds 1 and 2, each charged once


def _releases(ledger: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(ledger) as conn:
        return sorted(conn.execute("SELECT job_id, kind, round FROM releases"))


def _charges(ledger: Path) -> list[float]:
    with sqlite3.connect(ledger) as conn:
        return [float(e) for (e,) in conn.execute("SELECT epsilon FROM charges ORDER BY id")]


def _session_pids(sid: int) -> list[int]:
    """Processes still alive in the session the killed run started (its Ray workers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of stat: the session id
            pids.append(int(stat.parent.name))
    return pids


def _run_and_kill_after(out: Path, kill_after: int, *args: str) -> int:
    """``fedcore run`` in its own session, SIGKILLed (with every process it started) once its
    checkpoint of round ``kill_after`` exists; returns the round the checkpoint holds."""
    cmd = [str(BIN / "fedcore"), "run", str(APP), "--out", str(out), "--no-baselines", "--quiet", *args]
    proc = subprocess.Popen(cmd, env=dict(os.environ), start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while (out / "checkpoint.npz").is_file() is False or load_checkpoint(out).round < kill_after:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
    finally:
        for pid in [proc.pid, *_session_pids(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):  # only this run's own processes
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return load_checkpoint(out).round


@pytest.mark.slow
def test_a_killed_coordinator_resumes_to_the_uninterrupted_model_and_charges_once(
    tmp_path: Path, shared_data: Path
) -> None:
    rounds, sets = 4, ["--rounds", "4", "--seed", "7"]
    whole = tmp_path / "whole"
    run_app(APP, out_dir=whole, rounds=rounds, seed=7, baselines=False)
    cut = tmp_path / "cut"
    killed_at = _run_and_kill_after(cut, 2, *sets)
    assert 2 <= killed_at < rounds and not (cut / "model.npz").exists()  # it died mid-job, for real
    job_id = load_checkpoint(cut).request.job_id
    resume_run(cut, baselines=False)

    a, b = np.load(whole / "model.npz"), np.load(cut / "model.npz")
    assert len(a.files) == len(b.files) > 0
    for key in a.files:
        np.testing.assert_allclose(b[key], a[key], atol=1e-6, rtol=0)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (whole, cut))
    assert mb["job_id"] == job_id and [r["round"] for r in mb["rounds"]] == list(range(1, rounds + 1))
    for ra, rb in zip(ma["rounds"], mb["rounds"], strict=True):
        for site in HOSPITALS:
            assert rb["evaluate"][site]["accuracy"] == pytest.approx(
                ra["evaluate"][site]["accuracy"], abs=1e-9
            )
    for site in HOSPITALS:
        ledgers = [d / "sites" / site / "ledger.db" for d in (whole, cut)]
        assert _charges(ledgers[1]) == pytest.approx(_charges(ledgers[0]))  # count and epsilon
        expected = sorted((job_id, k, r) for k in ("evaluate", "train") for r in range(1, rounds + 1))
        assert _releases(ledgers[1]) == expected  # every round released once, none twice
    assert (cut / "summary.json").is_file() and "failed" not in json.loads((cut / "summary.json").read_text())
    with pytest.raises(ConfigError, match="nothing to resume"):
        resume_run(cut, baselines=False)


@pytest.mark.slow
@pytest.mark.he
def test_a_killed_sampled_he_coordinator_still_brings_lagging_sites_up_to_date(
    tmp_path: Path, shared_data: Path
) -> None:
    """Two of four hospitals per round under HE: a site sampled out lags and needs the sums it
    missed; the checkpoint keeps them (and who applied what), so the resumed job ends on the model
    and the releases of the uninterrupted one."""
    job = ["train.local_steps=20", "job.min_sites=2", "job.sites_per_round=2"]
    whole = tmp_path / "whole"
    run_app(APP, job="he", out_dir=whole, rounds=4, seed=7, sets=job, baselines=False)
    cut = tmp_path / "cut"
    sets = ["--job", "he", "--rounds", "4", "--seed", "7", *(a for j in job for a in ("--set", j))]
    killed_at = _run_and_kill_after(cut, 2, *sets)
    held = load_checkpoint(cut)
    assert killed_at < 4 and held.he_at is not None and held.he_held  # a site sampled out lags behind
    resume_run(cut, baselines=False)
    a, b = np.load(whole / "model.npz"), np.load(cut / "model.npz")
    for key in a.files:
        np.testing.assert_allclose(b[key], a[key], atol=1e-6, rtol=0)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (whole, cut))
    assert [sorted(r["train"]) for r in mb["rounds"]] == [sorted(r["train"]) for r in ma["rounds"]]
    assert all(not r["rejected"] for r in mb["rounds"]), [r["rejected"] for r in mb["rounds"]]
    for site in HOSPITALS:
        releases = [
            sorted((k, r) for _, k, r in _releases(d / "sites" / site / "ledger.db")) for d in (whole, cut)
        ]
        assert releases[1] == releases[0]  # the same rounds released, each once


@pytest.mark.slow
@pytest.mark.he
def test_a_killed_he_coordinator_resumes_from_the_sum_it_held_and_the_sites_state(
    tmp_path: Path, shared_data: Path
) -> None:
    """Under HE the coordinator holds only the last encrypted sum; each site keeps its model and
    optimizer state on disk, so the resumed job (a new Flower run, empty node state) goes on."""
    sets = ["--job", "he", "--rounds", "3", "--seed", "7", "--set", "train.local_steps=20"]
    whole = tmp_path / "whole"
    run_app(APP, job="he", out_dir=whole, rounds=3, seed=7, sets=["train.local_steps=20"], baselines=False)
    cut = tmp_path / "cut"
    killed_at = _run_and_kill_after(cut, 1, *sets)
    assert killed_at < 3 and not (cut / "model.npz").exists()
    assert load_checkpoint(cut).he_sum and not load_checkpoint(cut).model  # no plaintext model kept
    resume_run(cut, baselines=False)
    a, b = np.load(whole / "model.npz"), np.load(cut / "model.npz")
    for key in a.files:
        np.testing.assert_allclose(b[key], a[key], atol=1e-6, rtol=0)
    job_id = load_checkpoint(cut).request.job_id
    for site in HOSPITALS:
        expected = sorted((job_id, k, r) for k in ("evaluate", "train") for r in (1, 2, 3))
        assert _releases(cut / "sites" / site / "ledger.db") == expected


@pytest.mark.slow
def test_a_killed_secagg_coordinator_resumes_to_the_uninterrupted_model_and_each_round_releases_once(
    tmp_path: Path, shared_data: Path
) -> None:
    """Under secure aggregation the resumed coordinator is a new attempt (fresh keys); each site's
    stored input of a round is masked anew, never recomputed, so the job ends on the uninterrupted
    model and every site's ledger holds each round's release once (docs/privacy.md)."""
    job = ["train.local_steps=20"]
    sets = ["--job", "secagg", "--rounds", "3", "--seed", "7", "--set", job[0]]
    whole = tmp_path / "whole"
    run_app(APP, job="secagg", out_dir=whole, rounds=3, seed=7, sets=job, baselines=False)
    cut = tmp_path / "cut"
    killed_at = _run_and_kill_after(cut, 1, *sets)
    assert killed_at < 3 and not (cut / "model.npz").exists()  # it died mid-job, for real
    resume_run(cut, baselines=False)
    a, b = np.load(whole / "model.npz"), np.load(cut / "model.npz")
    assert len(a.files) == len(b.files) > 0
    for key in a.files:  # the masks differ between attempts; the exact integer sums do not
        np.testing.assert_allclose(b[key], a[key], atol=1e-6, rtol=0)
    job_id = load_checkpoint(cut).request.job_id
    for site in HOSPITALS:
        expected = sorted((job_id, k, r) for k in ("evaluate", "train") for r in (1, 2, 3))
        assert _releases(cut / "sites" / site / "ledger.db") == expected


def test_the_admission_is_written_once_and_a_checkpoint_names_it_by_digest(tmp_path: Path) -> None:
    admission = {f"site{i}": {"accepted": True, "node": i, "plan": {"epsilon": 0.5}} for i in range(3)}
    named = save_admission(tmp_path, admission)
    assert named[0].startswith(f"admission-{named[1][:16]}")
    for rnd in (1, 2):  # every round's checkpoint names the one file
        save_checkpoint(tmp_path, Checkpoint(_request(), rnd, admission_file=named))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.npz", named[0]])
    assert load_checkpoint(tmp_path).admission == admission
    other = save_admission(tmp_path, {**admission, "site9": {"accepted": False}})  # a resumed job's
    assert other != named and load_checkpoint(tmp_path).admission == admission  # the old one stays
    (tmp_path / named[0]).write_text(json.dumps({**admission, "site0": {"accepted": False}}))
    with pytest.raises(ConfigError, match="does not match the digest"):
        load_checkpoint(tmp_path)
    (tmp_path / named[0]).unlink()
    with pytest.raises(ConfigError, match="unreadable"):
        load_checkpoint(tmp_path)


def _plans(ledger: Path) -> dict[str, str]:
    with sqlite3.connect(ledger) as conn:
        return dict(conn.execute("SELECT job_id, status FROM plans"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("job", "sets"),
    [
        ("default", []),
        ("dp", ["job.min_sites=2", "job.sites_per_round=2", "train.local_steps=5"]),  # sampled, charged
    ],
    ids=["every-site", "sampled-dp"],
)
def test_a_job_stopped_by_an_exception_after_a_checkpoint_keeps_the_sites_plans_and_resumes(
    tmp_path: Path, shared_data: Path, job: str, sets: list[str]
) -> None:
    """Ctrl-C (a ``KeyboardInterrupt`` from the progress hook, as the CLI's would raise) after round 2
    of 4: the sites are not told to cancel (a site not sampled yet keeps its reservation: the resumed
    job may ask it), the user gets one line naming the round and `fedcore resume`, and the resumed
    job releases and charges what the uninterrupted one does, each round once; without DP noise it
    ends on the uninterrupted model."""
    rounds = 4
    whole = tmp_path / "whole"
    run_app(APP, job=job, out_dir=whole, rounds=rounds, seed=7, sets=sets, baselines=False)

    def interrupt(r: Any) -> None:
        if r.round == 2:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(JobStoppedError) as stopped:
        run_app(
            APP, job=job, out_dir=cut, rounds=rounds, seed=7, sets=sets, baselines=False, on_round=interrupt
        )
    line = str(stopped.value)
    assert "\n" not in line and "stopped after round 2 of 4 (KeyboardInterrupt)" in line
    assert f"fedcore resume {cut}" in line
    job_id = load_checkpoint(cut).request.job_id
    assert load_checkpoint(cut).round == 2 and not (cut / "model.npz").exists()
    for site in HOSPITALS:  # the plan is held, not cancelled: the resumed job is admitted under it
        released = any(r <= 2 for _, _, r in _releases(cut / "sites" / site / "ledger.db"))
        assert _plans(cut / "sites" / site / "ledger.db") == {job_id: "released" if released else "reserved"}
        assert "cancel" not in [r.kind for r in AuditLog(cut / "sites" / site / "audit.db").records()]

    resume_run(cut, baselines=False)
    if job == "default":
        a, b = np.load(whole / "model.npz"), np.load(cut / "model.npz")
        assert len(a.files) == len(b.files) > 0
        for key in a.files:
            np.testing.assert_allclose(b[key], a[key], atol=1e-6, rtol=0)
    whole_id = json.loads((whole / "metrics.json").read_text())["job_id"]
    for site in HOSPITALS:
        ledgers = [d / "sites" / site / "ledger.db" for d in (whole, cut)]
        charges = [_charges(d) for d in ledgers]
        assert len(charges[1]) == len(charges[0])  # a charge twice would be one entry more
        if job == "default":  # under DP each run draws its noisy training-set size, hence its epsilons
            assert charges[1] == pytest.approx(charges[0])
        same = [(job_id, k, r) for _, k, r in _releases(ledgers[0])]
        assert _releases(ledgers[1]) == same  # the uninterrupted job's releases, none twice
        assert list(_plans(ledgers[1]).values()) == [_plans(ledgers[0])[whole_id]]  # ended the same way
    assert "failed" not in json.loads((cut / "summary.json").read_text())
    if job == "dp":  # the comparison of charges above was not between empty ledgers
        assert all(_charges(cut / "sites" / site / "ledger.db") for site in HOSPITALS)


@pytest.mark.slow
def test_ctrl_c_during_a_simulation_ends_it_at_once_with_one_line_and_the_job_resumes(
    tmp_path: Path, shared_data: Path
) -> None:
    """Ctrl-C in a terminal: SIGINT to `fedcore run` and every process of its group (Ray's workers
    too). It used to print "interrupted" and then hang (Flower's server thread waited out the round's
    600 s timeout, its engine threads waited on the stopped Ray actors) before cancelling the job."""
    rounds, out = 12, tmp_path / "run"
    cmd = [str(BIN / "fedcore"), "run", str(APP), "--out", str(out), "--no-baselines", "--quiet"]
    proc = subprocess.Popen(
        [*cmd, "--rounds", str(rounds), "--seed", "7"],
        env=dict(os.environ), start_new_session=True, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.npz").is_file() or load_checkpoint(out).round < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint of round 2"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        interrupted = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - interrupted
    finally:
        for pid in [proc.pid, *_session_pids(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):  # only this run's own processes
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
    ckpt = load_checkpoint(out)
    assert proc.returncode == 130 and took < 30, (proc.returncode, took, err[-2000:])
    assert 2 <= ckpt.round < rounds and not (out / "model.npz").exists()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"fedcore resume {out}" in lines[0], err[-2000:]
    assert "stopped after round" in lines[0] and "KeyboardInterrupt" in lines[0]
    for site in HOSPITALS:
        assert _plans(out / "sites" / site / "ledger.db") == {ckpt.request.job_id: "released"}

    resume_run(out, baselines=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["job_id"] == ckpt.request.job_id
    assert [r["round"] for r in metrics["rounds"]] == list(range(1, rounds + 1))
    for site in HOSPITALS:
        expected = sorted(
            (ckpt.request.job_id, k, r) for k in ("evaluate", "train") for r in range(1, rounds + 1)
        )
        assert _releases(out / "sites" / site / "ledger.db") == expected  # each round once, none twice


@pytest.mark.slow
def test_a_job_that_stops_before_any_checkpoint_is_cancelled_at_every_site(
    tmp_path: Path, shared_data: Path
) -> None:
    """Nothing to resume (round 1 fails: an update-norm bound no update meets), so today's rule
    holds: the sites are told to cancel, nothing is held, and the error is the round's own."""
    out = tmp_path / "run"
    with pytest.raises(UpdateError, match="round 1: 0 valid updates") as err:
        run_app(APP, out_dir=out, rounds=3, seed=7, sets=["job.max_update_norm=1e-9"], baselines=False)
    assert not isinstance(err.value, JobStoppedError) and not (out / "checkpoint.npz").exists()
    for site in HOSPITALS:
        assert list(_plans(out / "sites" / site / "ledger.db").values()) == ["cancelled"]

"""A client algorithm and a simulated attack through Flower's simulation engine (`fedcore run`):
SCAFFOLD's extras travel both ways and give the model the in-process engine gives; a stopped job
resumes to the uninterrupted model (the sites' control variates in their state folders, the server's
in the checkpoint); an attacked run says so in every output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcore.config import load_job
from fedcore.errors import JobStoppedError
from fedcore.harness.runner import resume_run, run_app
from tests.fl_loop import run_loop

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"
SITES = [APP / "sites" / f"{n}.toml" for n in ("cleveland", "hungary", "switzerland", "va")]


def test_a_scaffold_job_runs_through_fedcore_run_as_in_process(tmp_path: Path, shared_data: Path) -> None:
    summary = run_app(APP, job="scaffold", out_dir=tmp_path, rounds=3, seed=7, baselines=False)
    expected = run_loop(load_job(APP / "jobs" / "scaffold.toml", ["job.rounds=3"]), SITES, seed=7)
    assert summary["mean_site_accuracy"] == pytest.approx(expected, abs=1e-9)
    rounds = json.loads((tmp_path / "metrics.json").read_text())["rounds"]
    assert all(r["aggregate"]["scaffold_control_norm"] > 0 for r in rounds)
    for site in ("cleveland", "va"):  # each site's c_i, in its own state folder
        assert list((tmp_path / "sites" / site / "algorithm").glob("*/3.npz"))


@pytest.mark.slow
def test_a_stopped_scaffold_job_resumes_to_the_uninterrupted_model(tmp_path: Path, shared_data: Path) -> None:
    whole = tmp_path / "whole"
    run_app(APP, job="scaffold", out_dir=whole, rounds=4, seed=7, baselines=False)

    def interrupt(r: Any) -> None:
        if r.round == 2:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(JobStoppedError):
        run_app(APP, job="scaffold", out_dir=cut, rounds=4, seed=7, baselines=False, on_round=interrupt)
    resume_run(cut, baselines=False)
    a, b = np.load(whole / "model.npz"), np.load(cut / "model.npz")
    for key in a.files:
        np.testing.assert_allclose(b[key], a[key], atol=1e-6, rtol=0)


def test_an_attacked_run_says_so_in_every_output(tmp_path: Path, shared_data: Path) -> None:
    sets = ['attack.name="sign_flip"', 'attack.sites=["va"]']
    summary = run_app(APP, job="fedavg", out_dir=tmp_path, rounds=2, seed=7, sets=sets, baselines=False)
    stamp = {"name": "sign_flip", "sites": ["va"], "options": {}}
    assert json.loads((tmp_path / "metrics.json").read_text())["attack"] == stamp
    assert json.loads((tmp_path / "summary.json").read_text())["attack"] == {**stamp, "simulation_only": True}
    report = (tmp_path / "report.md").read_text()
    assert "**Simulated attack** `sign_flip` at va (simulation only)." in report.splitlines()[4]
    expected = run_loop(load_job(APP / "jobs" / "fedavg.toml", ["job.rounds=2", *sets]), SITES, seed=7)
    assert summary["mean_site_accuracy"] == pytest.approx(expected, abs=1e-9)
    clean = run_loop(load_job(APP / "jobs" / "fedavg.toml", ["job.rounds=2"]), SITES, seed=7)
    assert expected != clean

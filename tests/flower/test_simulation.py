"""The real Flower simulation engine runs the medical job and computes what the oracle loop does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcore.config import load_job
from fedcore.harness.runner import run_app, run_seeds
from tests.fl_loop import run_loop

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"
SITES = [APP / "sites" / f"{n}.toml" for n in ("cleveland", "hungary", "switzerland", "va")]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, dict]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("run")
    return out, run_app(APP, out_dir=out, rounds=5, seed=7)


def test_run_directory_holds_model_metrics_summary_and_report(run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    out, _ = run
    for name in ("model.npz", "metrics.json", "summary.json", "report.md", "accuracy.png"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["rounds"] == 5 and on_disk["wall_seconds"] > 0
    for site in ("cleveland", "hungary", "switzerland", "va"):
        s = on_disk["sites"][site]
        assert 0 <= s["accuracy"] <= 1 and 0 <= s["local_only_accuracy"] <= 1
    assert 0.5 < on_disk["pooled_accuracy"] < 0.9
    assert len(on_disk["per_round_mean_accuracy"]) == 5
    assert "accuracy.png" in (out / "report.md").read_text()


def test_flower_run_equals_the_oracle_loop(run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    _, summary = run
    job = load_job(APP / "jobs" / "default.toml", ["job.rounds=5"])
    expected = run_loop(job, SITES, seed=7)
    assert summary["mean_site_accuracy"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.slow
def test_run_seeds_averages_every_number_over_the_seeds(tmp_path: Path, shared_data: Path) -> None:
    summary = run_seeds(APP, [3, 4], out_dir=tmp_path, rounds=2, baselines=False)
    runs = [json.loads((tmp_path / f"seed-{s}" / "summary.json").read_text()) for s in (3, 4)]
    assert runs[0]["mean_site_accuracy"] != runs[1]["mean_site_accuracy"]  # the seeds differ
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["seeds"] == [3, 4] and on_disk["rounds"] == 2
    for site in ("cleveland", "va"):
        pair = [r["sites"][site]["auc"] for r in runs]
        assert on_disk["sites"][site]["auc"] == pytest.approx(sum(pair) / 2)
        assert on_disk["sd_over_seeds"]["sites"][site]["auc"] == pytest.approx(abs(pair[0] - pair[1]) / 2)
    assert "mean over 2 seeds" in (tmp_path / "report.md").read_text()


def test_the_engine_entry_fedcore_calls_is_flowers_own() -> None:
    """``simulate`` calls the function Flower's own ``flwr-simulation`` process calls (the public
    ``run_simulation`` is deprecated in 1.42 and only wraps it); a Flower upgrade that renames or
    reshapes it fails here, not in a user's run."""
    import inspect

    import flwr.simulation.app
    from flwr.simulation.run_simulation import _run_simulation

    params = inspect.signature(_run_simulation).parameters
    for name in (
        "server_app",
        "client_app",
        "num_supernodes",
        "backend_config",
        "verbose_logging",
        "exit_event",
    ):
        assert name in params, name
    assert "_run_simulation(" in inspect.getsource(flwr.simulation.app.run_simulation_process)

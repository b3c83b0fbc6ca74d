"""An app's own aggregator and mechanism (examples/medical/plugins.py) run a job, with no edit to fedcore."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dp_accounting
import pytest

from fedcore.harness.runner import run_app
from fedcore.privacy.accounting import event_from_json
from fedcore.site.ledger import PrivacyLedger

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"


def test_fedcore_itself_knows_neither_plugin() -> None:
    code = (
        "import fedcore; from fedcore.aggregators import aggregator_names; "
        "print('trimmed_mean' in aggregator_names(), 'local_dp' in fedcore.mechanism_names())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False"]


def test_a_job_uses_the_apps_own_aggregator_and_mechanism(tmp_path: Path, shared_data: Path) -> None:
    summary = run_app(APP, job="local_dp", out_dir=tmp_path, rounds=3, baselines=False)
    assert summary["aggregator"] == "trimmed_mean"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for site, entry in summary["privacy"]["sites"].items():
        updates = next(r for r in entry["releases"] if r["what"] == "model updates")
        assert "Gaussian noise 3 x clip added here" in updates["protection"]
        golden = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
        golden.compose(dp_accounting.GaussianDpEvent(3.0), 3)
        assert updates["epsilon"] == pytest.approx(golden.get_epsilon(1e-5), rel=5e-3)
        (charge,) = PrivacyLedger(tmp_path / "sites" / site / "ledger.db", site=site).summary().charges
        assert "SelfComposedDpEvent(event=GaussianDpEvent(noise_multiplier=3.0), count=3)" in str(
            event_from_json(charge.event_json)
        )
        assert all(m["local_noise_multiplier"] == 3.0 for r in metrics["rounds"] for m in r["train"].values())
    assert 0 <= summary["mean_site_accuracy"] <= 1

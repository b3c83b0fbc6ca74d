"""Client-level DP through the real Flower simulation: distributed shares under HE, charged per site.

The coordinator only adds ciphertexts; each site clipped its update and added its own share, and its
ledger charged that share (``z / sqrt(num_sites)`` per round), which is what dp_accounting gives.
"""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting
import pytest

from fedcore.harness.runner import run_app
from fedcore.privacy.accounting import event_from_json
from fedcore.site.ledger import PrivacyLedger

pytestmark = pytest.mark.he

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"
HOSPITALS = ("cleveland", "hungary", "switzerland", "va")


def test_client_dp_job_charges_each_site_its_own_share(tmp_path: Path, shared_data: Path) -> None:
    summary = run_app(APP, job="client_dp", out_dir=tmp_path, rounds=3, baselines=False)
    for site in HOSPITALS:
        ledger = PrivacyLedger(tmp_path / "sites" / site / "ledger.db", site=site)
        charges = ledger.summary().charges
        assert len(charges) == 3  # one share per round answered
        acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
        for charge in charges:
            acc.compose(event_from_json(charge.event_json))
        shares = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
        shares.compose(dp_accounting.GaussianDpEvent(6.0 / math.sqrt(4)), 3)
        assert acc.get_epsilon(1e-5) == pytest.approx(shares.get_epsilon(1e-5), rel=5e-3)  # its own shares
        releases = summary["privacy"]["sites"][site]["releases"]
        updates = next(r for r in releases if r["what"] == "model updates")
        assert updates["epsilon"] == pytest.approx(shares.get_epsilon(1e-5), rel=5e-3)
        assert "own share" in updates["protection"]
    assert 0 <= summary["mean_site_accuracy"] <= 1

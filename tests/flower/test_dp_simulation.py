"""DP through the real Flower simulation: reported epsilon is dp_accounting's, budgets are enforced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dp_accounting
import pytest

from fedcore.cli import main
from fedcore.errors import FedcoreError
from fedcore.privacy.accounting import event_from_json
from fedcore.privacy.ledger import PrivacyLedger
from fedcore.runner import run_app

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"
HOSPITALS = ("cleveland", "hungary", "switzerland", "va")


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("dp")
    return out, run_app(APP, job="dp", out_dir=out, rounds=3, seed=1, baselines=False)


def test_reported_epsilon_equals_dp_accounting(dp_run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = dp_run
    for site in HOSPITALS:
        reported = summary["privacy"]["sites"][site]
        charges = PrivacyLedger(out / "sites" / f"{site}.ledger.db", site=site).summary().charges
        assert len(charges) == 1
        acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
        acc.compose(event_from_json(charges[0].event_json))
        golden = acc.get_epsilon(1e-5)
        assert reported["epsilon"] == pytest.approx(golden, rel=5e-3), site
        assert 0.98 <= golden <= 1.0 + 5e-3  # calibrated to the job's target epsilon = 1
        assert reported["remaining_epsilon"] == pytest.approx(10.0 - reported["epsilon"], abs=0.05)
    assert 0.4 <= summary["privacy"]["mean_membership_attack_auc"] <= 0.7
    assert "Privacy" in (out / "report.md").read_text()


def test_ledger_and_audit_commands(
    dp_run: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = dp_run
    site = str(APP / "sites" / "cleveland.toml")
    assert main(["ledger", site, "--state-dir", str(out / "sites"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["datasets"][0]["budget_epsilon"] == 10.0
    assert shown["datasets"][0]["spent_epsilon"] <= 1.0 + 5e-3
    assert main(["audit", "verify", site, "--state-dir", str(out / "sites")]) == 0


def _app_with_budget(tmp_path: Path, budget: float) -> Path:
    app = tmp_path / "medical"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    for h in HOSPITALS:
        f = app / "sites" / f"{h}.toml"
        text = f.read_text().replace("../../../../shared", str(APP.parents[2] / "shared"))
        text = text.replace(
            "budget_epsilon = 10.0", f'budget_epsilon = {budget}\nledger = "{tmp_path}/{h}.db"'
        )
        f.write_text(text)
    return app


def test_second_job_is_refused_once_the_budget_is_spent(tmp_path: Path, shared_data: Path) -> None:
    app = _app_with_budget(tmp_path, 1.2)  # one epsilon-1 job fits; two composed (~1.4) do not
    run_app(app, job="dp", out_dir=tmp_path / "first", rounds=2, baselines=False)
    with pytest.raises(FedcoreError, match=r"refused, nothing was run"):
        run_app(app, job="dp", out_dir=tmp_path / "second", rounds=2, baselines=False)
    for h in HOSPITALS:
        ledger = PrivacyLedger(tmp_path / f"{h}.db", site=h).summary()
        assert len(ledger.charges) == 1 and ledger.datasets[0].spent_epsilon <= 1.2

"""DP through the real Flower simulation: what each site charged is dp_accounting's value, every
release is listed, budgets are enforced in two phases (a refused job charges no one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dp_accounting
import pytest

from fedcore.cli import main
from fedcore.errors import FedcoreError
from fedcore.harness.runner import run_app
from fedcore.privacy.accounting import event_from_json
from fedcore.site.ledger import PrivacyLedger
from fedcore.site.plans import PlanBook

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"
HOSPITALS = ("cleveland", "hungary", "switzerland", "va")


def _ledger(out: Path, site: str) -> PrivacyLedger:
    return PrivacyLedger(out / "sites" / site / "ledger.db", site=site)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("dp")
    return out, run_app(APP, job="dp", out_dir=out, rounds=3, seed=1, baselines=False)


def test_charged_epsilon_equals_dp_accounting_and_every_release_is_listed(
    dp_run: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = dp_run
    for site in HOSPITALS:
        reported = summary["privacy"]["sites"][site]
        charges = _ledger(out, site).summary().charges
        assert len(charges) == 3  # one per round answered (the first also pays the noisy size)
        acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
        for charge in charges:
            acc.compose(event_from_json(charge.event_json))
        golden = acc.get_epsilon(1e-5)
        assert reported["epsilon"] == pytest.approx(golden, rel=5e-3), site
        releases = {r["what"]: r for r in reported["releases"]}
        # the job's epsilon 1 is the whole charge: DP-SGD shares it with the noisy size
        assert 1.0 * (1 - 2e-3) <= reported["epsilon"] <= 1.0 and reported["requested_epsilon"] == 1.0
        assert releases["model updates"]["epsilon"] < reported["epsilon"] - 0.05
        assert releases["evaluation metrics"]["count"] == 0  # withheld by the sites' policy
        assert releases["training-set size"]["epsilon"] > 0  # released once, with noise, charged
        assert reported["remaining_epsilon"] == pytest.approx(10.0 - golden, abs=0.05)
        assert reported["audit_head"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert all("accuracy" not in m for r in metrics["rounds"] for m in r["evaluate"].values())
    assert summary["per_round_mean_accuracy"] == [None] * 3
    assert 0.4 <= summary["privacy"]["mean_membership_attack_auc"] <= 0.7
    assert "Privacy" in (out / "report.md").read_text()


def test_ledger_and_audit_commands(
    dp_run: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, summary = dp_run
    site = str(APP / "sites" / "cleveland.toml")
    assert main(["ledger", site, "--state-dir", str(out / "sites"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["datasets"][0]["budget_epsilon"] == 10.0
    assert shown["datasets"][0]["spent_epsilon"] <= 1.1
    head = summary["privacy"]["sites"]["cleveland"]["audit_head"].replace(" ", ":")
    assert shown["audit_head"] == head  # the coordinator's copy of the head matches the site's
    assert main(["audit", "verify", site, "--state-dir", str(out / "sites"), "--head", head]) == 0


def _app_with_budgets(tmp_path: Path, budgets: dict[str, float]) -> Path:
    app = tmp_path / "medical"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    for h in HOSPITALS:
        f = app / "sites" / f"{h}.toml"
        text = f.read_text().replace("../../../../shared", str(APP.parents[2] / "shared"))
        f.write_text(text.replace("budget_epsilon = 10.0", f"budget_epsilon = {budgets.get(h, 10.0)}"))
    return app


def test_a_job_one_site_refuses_charges_no_site(tmp_path: Path, shared_data: Path) -> None:
    app = _app_with_budgets(tmp_path, {"hungary": 0.5})  # too small for an epsilon-1 job
    with pytest.raises(FedcoreError, match=r"(?s)refused, nothing was run: 3 of 4 sites accepted.*hungary:"):
        run_app(app, job="dp", out_dir=tmp_path / "run", rounds=2, baselines=False)
    admission = json.loads((tmp_path / "run" / "admission.json").read_text())
    assert not admission["hungary"]["accepted"] and "spent 0 of 0.5" in admission["hungary"]["reason"]
    assert all(admission[h]["accepted"] for h in HOSPITALS if h != "hungary")
    for h in HOSPITALS:
        ledger = _ledger(tmp_path / "run", h)
        assert ledger.summary().charges == (), h  # the three that accepted were told to cancel
        plan = PlanBook(ledger).plan(next(iter(_job_ids(ledger)), "none"))
        assert plan is None or plan.status == "cancelled"


def _job_ids(ledger: PrivacyLedger) -> list[str]:
    import sqlite3

    with sqlite3.connect(ledger.path) as conn:
        return [r[0] for r in conn.execute("SELECT job_id FROM plans")]

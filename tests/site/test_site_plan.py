"""A site's plan: tightened by its own policy, calibrated to dp_accounting, refused when it cannot pay."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import pytest

from fedcore.privacy.mechanisms import get_mechanism
from fedcore.privacy.mechanisms.client_dp import ClientDp
from fedcore.privacy.mechanisms.dpsgd import DpSgd
from tests.adversarial.coordinator import DEFAULT_POLICY, Coordinator, job, make_site


def test_coordinator_values_only_tighten() -> None:
    dpsgd, cdp = get_mechanism("dpsgd"), get_mechanism("client_dp")
    site = DpSgd(epsilon=1.0, delta=1e-6, max_grad_norm=1.0)
    loose = DpSgd(epsilon=8.0, delta=1e-3, max_grad_norm=5.0)
    assert dpsgd.tighten(loose, site, max_epsilon=None) == site
    assert dpsgd.tighten(loose, None, max_epsilon=2.0) == DpSgd(2.0, 1e-3, 5.0)
    strict = ClientDp(0.5, 2.0)
    assert cdp.tighten(ClientDp(5.0, 0.1), strict, max_epsilon=None) == strict


def test_planned_dpsgd_epsilon_equals_dp_accounting(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path, DEFAULT_POLICY + 'dataset_size = "public"\n'), tmp_path / "s")
    plan = c.site.plan(job("dp", "privacy.dpsgd.epsilon=1.0"))
    (mechanism,) = plan.mechanisms
    q = 4 / len(c.site.data.y_train)  # the exact size: the policy declares it public
    sigma = mechanism.public["noise_multiplier"]
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), 3 * 5)
    golden = acc.get_epsilon(1e-5)
    assert golden == pytest.approx(1.0, rel=0.01) and golden <= 1.0 + 1e-3
    assert plan.epsilon == pytest.approx(golden, rel=0.01)


def test_site_policy_minimum_applies_to_a_job_without_dp(tmp_path: Path) -> None:
    policy = DEFAULT_POLICY + "[privacy.dpsgd]\nepsilon = 0.5\n"
    c = Coordinator(make_site(tmp_path, policy), tmp_path / "s")
    plan = c.admit(job("default"))["plan"]  # the job asks for nothing; the site adds its DP-SGD
    updates = next(r for r in plan["releases"] if r["what"] == "model updates")
    assert "DP-SGD" in updates["protection"] and updates["epsilon"] < 0.5  # it shares 0.5 with the size
    assert 0.5 * (1 - 2e-3) <= plan["epsilon"] <= 0.5 and plan["target_epsilon"] == 0.5  # the site's total


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        ("[privacy]\n", "no privacy budget to pay for DP"),
        (DEFAULT_POLICY + "require_he = true\n", "requires homomorphic encryption"),
    ],
)
def test_refusals_name_the_reason(tmp_path: Path, policy: str, reason: str) -> None:
    c = Coordinator(make_site(tmp_path, policy), tmp_path / "s")
    answer = c.admit(job("dp"))
    assert not answer["accepted"] and reason in answer["reason"]


def test_a_raised_budget_applies_only_through_the_explicit_audited_step(tmp_path: Path) -> None:
    from fedcore.cli import main
    from fedcore.clients.runtime import SiteRuntime
    from fedcore.config import load_site
    from fedcore.errors import PolicyError

    site = make_site(tmp_path)
    c = Coordinator(site, tmp_path / "s")
    assert c.site.guard.budget_report()["budget_epsilon"] == 20.0
    site.write_text(site.read_text().replace("budget_epsilon = 20.0", "budget_epsilon = 30.0"))
    with pytest.raises(PolicyError, match="--raise-budget"):
        SiteRuntime(load_site(site), tmp_path / "s")
    assert main(["ledger", str(site), "--state-dir", str(tmp_path / "s"), "--raise-budget"]) == 0
    raised = SiteRuntime(load_site(site), tmp_path / "s")
    assert raised.guard.budget_report()["budget_epsilon"] == 30.0
    assert raised.guard.audit.records()[-1].kind == "budget"

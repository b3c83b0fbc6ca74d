"""A job's epsilon is its total: what a site is charged for every release of the job composed.

Oracles: ``dp_accounting``'s own PLD accountant composing the events built from the plan's public
numbers (noise multiplier, sample rate, the size's noise) or the ledger's stored charges.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import dp_accounting
import pytest

from fedcore.cli import main
from fedcore.clients.runtime import SiteRuntime
from fedcore.config import JobRequest, load_job, load_site
from fedcore.privacy.accounting import PLD_DISCRETIZATION, event_from_json
from fedcore.site.ledger import PrivacyLedger
from fedcore.site.plan import SitePlan
from tests.adversarial.coordinator import DEFAULT_POLICY, MEDICAL, Coordinator, job, make_site

DELTA = 1e-5
SIZE_NOISE = 10.0  # the site policy's default dataset_size_noise
TOL = 2e-3  # the calibration's window below the target is 1e-3 wide


def _medical_dp(job_id: str) -> JobRequest:
    """The medical example's DP job as it ships (epsilon 1, 15 rounds x 100 steps)."""
    return JobRequest(job_id, 4, load_job(MEDICAL / "jobs" / "dp.toml", []))


def _golden(plan: SitePlan, *, steps: int, size: bool) -> float:
    """dp_accounting's composition of DP-SGD (from the plan's public numbers) and the noisy size."""
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    step = dp_accounting.PoissonSampledDpEvent(
        plan.public["sample_rate"], dp_accounting.GaussianDpEvent(plan.public["noise_multiplier"])
    )
    acc.compose(step, steps)
    if size:
        acc.compose(dp_accounting.GaussianDpEvent(SIZE_NOISE))
    return float(acc.get_epsilon(DELTA))


def _updates(plan: SitePlan) -> float:
    (updates,) = (r for r in plan.releases if r.what == "model updates")
    assert updates.epsilon is not None
    return updates.epsilon


def test_the_medical_dp_job_costs_its_named_epsilon_with_the_size_it_pays_for(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "s")
    plan = c.site.plan(_medical_dp("med"))
    assert plan.size.event is not None and plan.target_epsilon == 1.0  # this plan pays for the size
    golden = _golden(plan, steps=15 * 100, size=True)
    assert 1.0 - TOL <= golden <= 1.0 and plan.epsilon == pytest.approx(golden, rel=1e-6)
    assert _updates(plan) < 1.0 - 0.05  # DP-SGD gets what the size leaves, not the whole target
    assert c.admit(_medical_dp("med"))["accepted"]


def test_a_size_charged_earlier_leaves_dpsgd_the_whole_target(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    c = Coordinator(site, tmp_path / "s")
    first, second = job("dp", job_id="first"), job("dp", job_id="second")
    assert c.admit(first)["accepted"]
    shared = c.site.plan(first)
    c.train(first, 1, c.model(first))  # the first answer charges the noisy size
    plan = c.site.plan(second)
    assert plan.size.event is None and "charged by an earlier job" in plan.size.how
    golden = _golden(plan, steps=3 * 5, size=False)  # job(): 3 rounds x 5 steps
    assert 1.0 - TOL <= golden <= 1.0 and _updates(plan) == pytest.approx(plan.epsilon, rel=1e-9)
    assert plan.public["noise_multiplier"] < shared.public["noise_multiplier"]  # less noise: more left
    # the job that paid for the size plans as before after its first answer: a site restarted (a new
    # process, no cached plan) must not change its noise, or it would refuse its own job as changed
    again = SiteRuntime(load_site(site), tmp_path / "s").plan(first)
    assert again.public == shared.public and again.epsilon == pytest.approx(shared.epsilon, rel=1e-9)


def test_a_job_whose_other_releases_exceed_its_epsilon_is_refused_with_the_parts(tmp_path: Path) -> None:
    policy = DEFAULT_POLICY + 'evaluation = "dp"\nevaluation_epsilon = 1.2\n'
    c = Coordinator(make_site(tmp_path, policy), tmp_path / "s")
    answer = c.admit(job("dp", job_id="too-much"))  # epsilon 1 named; DP evaluations alone cost 1.2
    assert not answer["accepted"]
    reason = answer["reason"]
    assert "names epsilon 1 in total" in reason and "evaluation metrics 1.2" in reason
    assert "training-set size 0.341" in reason and re.search(r"name a total above 1\.\d", reason)
    assert "\n" not in reason
    assert c.site.guard.plans.plan("too-much") is None  # nothing reserved


def test_dp_evaluations_share_the_total(tmp_path: Path) -> None:
    policy = DEFAULT_POLICY + 'evaluation = "dp"\nevaluation_epsilon = 0.3\n'
    c = Coordinator(make_site(tmp_path, policy), tmp_path / "s")
    plan = c.site.plan(job("dp", "privacy.dpsgd.epsilon=2.0", job_id="evals"))
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    for event in (*plan.events, plan.size.event):
        assert event is not None
        acc.compose(event)
    assert 2.0 * (1 - TOL) <= acc.get_epsilon(DELTA) <= 2.0
    assert plan.epsilon == pytest.approx(acc.get_epsilon(DELTA), rel=1e-6)


def test_a_job_with_fixed_noise_keeps_it_and_states_its_total(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path, DEFAULT_POLICY.replace("20.0", "200.0")), tmp_path / "s")
    plan = c.site.plan(job("client_dp", "privacy.client_dp.noise_multiplier=3.0"))
    assert plan.target_epsilon is None and plan.public["share_noise_multiplier"] == pytest.approx(1.5)
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    acc.compose(dp_accounting.GaussianDpEvent(1.5), 3)
    assert plan.epsilon == pytest.approx(acc.get_epsilon(DELTA), rel=1e-6)
    assert plan.summary()["target_epsilon"] is None and plan.summary()["epsilon"] == plan.epsilon


def test_the_ledger_shows_how_its_charges_compose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = make_site(tmp_path)
    c = Coordinator(site, tmp_path / "s")
    first, second = job("dp", job_id="one"), job("dp", job_id="two")
    for request in (first, second):
        assert c.admit(request)["accepted"]
    for r in (1, 2, 3):
        c.train(first, r, c.model(first))
    c.train(second, 1, c.model(second))
    ledger = PrivacyLedger(tmp_path / "s" / "cleveland" / "ledger.db", site="cleveland")
    charges, totals = ledger.summary().charges, ledger.running_totals()
    assert [t.charge_id for t in totals] == [ch.id for ch in charges] and len(charges) == 4
    oracle = dp_accounting.pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    for ch, total in zip(charges, totals, strict=True):
        oracle.compose(event_from_json(ch.event_json))  # every charge so far, composed by dp_accounting
        assert total.dataset_epsilon == pytest.approx(oracle.get_epsilon(DELTA), rel=1e-6)
    assert totals[-1].dataset_epsilon == ledger.spent("heart_disease")[0]
    job_one = ledger.job_charge("one")
    assert job_one is not None and totals[2].job_epsilon == job_one[0] <= 1.0
    assert totals[2].dataset_epsilon < sum(ch.epsilon for ch in charges[:3]) - 0.1  # composed, not summed
    assert totals[3].job_epsilon == charges[3].epsilon  # the second job's first charge, alone
    state = ["--state-dir", str(tmp_path / "s")]
    assert main(["ledger", str(site), *state, "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert "compose (PLD" in body["composition"]
    for line, total in zip(body["charges"], totals, strict=True):
        assert {"id", "epsilon", "delta", "job_id", "released"} <= set(line)  # the keys it always had
        assert line["composed_epsilon"] == total.dataset_epsilon and line["job_epsilon"] == total.job_epsilon
    assert main(["ledger", str(site), *state]) == 0
    text = " ".join(capsys.readouterr().out.split())  # as one line, whatever the terminal wraps
    assert "rather than add" in text and f"composed so far: job {totals[2].job_epsilon:.3f}" in text

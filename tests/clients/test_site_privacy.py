"""A site admits a job only if its planned privacy cost fits its budget; it never loosens its policy."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import numpy as np
import pytest

from fedcore.clients.job import JobPrivacy, plan_site_privacy
from fedcore.clients.policy import ClientDp, DpSgd, tighten_client_dp, tighten_dpsgd
from fedcore.clients.site import SiteRuntime
from fedcore.clients.trainer import TrainConfig
from fedcore.errors import BudgetExceededError, PolicyError
from fedcore.models import build_model, get_arrays

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"


def _site(tmp_path: Path, privacy: str, name: str = "cleveland") -> Path:
    text = (APP / "sites" / f"{name}.toml").read_text()
    text = text.replace("../../../../shared", str(APP.parents[2] / "shared"))
    text = text.split("[privacy]")[0] + privacy
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _job(job_id: str, **kw: object) -> JobPrivacy:
    base = dict(job_id=job_id, rounds=3, local_steps=10, batch_size=4, num_sites=4, min_sites=4)
    return JobPrivacy(**{**base, **kw})  # type: ignore[arg-type]


def test_coordinator_values_only_tighten() -> None:
    site = DpSgd(epsilon=1.0, delta=1e-6, max_grad_norm=1.0)
    loose = DpSgd(epsilon=8.0, delta=1e-3, max_grad_norm=5.0)
    assert tighten_dpsgd(site, loose, max_epsilon=None) == site
    assert tighten_dpsgd(None, loose, max_epsilon=2.0) == DpSgd(2.0, 1e-3, 5.0)
    strict = ClientDp("distributed", 0.5, 2.0)
    assert tighten_client_dp(strict, ClientDp("central", 5.0, 0.1)) == strict


def test_planned_epsilon_equals_dp_accounting(tmp_path: Path) -> None:
    rt = SiteRuntime(
        __import__("fedcore.config", fromlist=["load_site"]).load_site(
            _site(tmp_path, "[privacy]\nbudget_epsilon = 5.0\n")
        ),
        tmp_path / "state",
    )
    job = _job("j1", dpsgd=DpSgd(1.0, 1e-5, 1.0))
    plan = plan_site_privacy(job, rt.policy, num_examples=len(rt.data.y_train))
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    q = 4 / len(rt.data.y_train)
    acc.compose(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(plan.dpsgd_noise_multiplier)), 30
    )
    golden = acc.get_epsilon(1e-5)
    assert golden == pytest.approx(1.0, rel=0.01) and golden <= 1.0 + 1e-3
    _, report = rt.admit(job)
    assert report["epsilon"] == pytest.approx(golden, rel=0.01)
    assert report["remaining_epsilon"] < 5.0


def test_job_that_does_not_fit_is_refused_before_training(tmp_path: Path) -> None:
    from fedcore.config import load_site

    rt = SiteRuntime(load_site(_site(tmp_path, "[privacy]\nbudget_epsilon = 4.5\n")), tmp_path / "s")
    g = get_arrays(build_model({"name": "logreg"}, 13, seed=0))
    cfg = TrainConfig(lr=0.01)
    first = _job("first", client_dp=ClientDp("distributed", 1.0, 2.0), secure_noise=True)
    rt.train(g, model_spec={"name": "logreg"}, cfg=cfg, steps=2, seed=0, job=first)
    second = _job("second", client_dp=ClientDp("distributed", 1.0, 2.0))
    with pytest.raises(BudgetExceededError, match="budget"):
        rt.train(g, model_spec={"name": "logreg"}, cfg=cfg, steps=2, seed=0, job=second)
    summary = rt.privacy.ledger().summary()
    assert [c.job_id for c in summary.charges] == ["first"]
    assert summary.datasets[0].spent_epsilon <= 4.5
    assert rt.privacy.audit().verify().ok
    # the same job again (next round) is not charged twice
    rt.train(g, model_spec={"name": "logreg"}, cfg=cfg, steps=2, seed=0, job=first)
    assert len(rt.privacy.ledger().summary().charges) == 1


def test_dp_job_without_budget_and_he_requirement_are_refused(tmp_path: Path) -> None:
    from fedcore.config import load_site

    rt = SiteRuntime(load_site(_site(tmp_path, "[privacy]\nrequire_he = true\n")), tmp_path / "s")
    with pytest.raises(PolicyError, match="requires homomorphic encryption"):
        rt.admit(_job("x"))
    rt2 = SiteRuntime(load_site(_site(tmp_path, "")), tmp_path / "s2")
    with pytest.raises(PolicyError, match="no privacy budget"):
        rt2.admit(_job("y", client_dp=ClientDp("central", 1.0, 1.0)))


def test_distributed_share_is_clipped_and_noised(tmp_path: Path) -> None:
    from fedcore.config import load_site

    rt = SiteRuntime(load_site(_site(tmp_path, "[privacy]\nbudget_epsilon = 50.0\n")), tmp_path / "s")
    g = get_arrays(build_model({"name": "logreg"}, 13, seed=0))
    job = _job("n", client_dp=ClientDp("distributed", 0.01, 1.0))
    res = rt.train(g, model_spec={"name": "logreg"}, cfg=TrainConfig(lr=0.5), steps=20, seed=0, job=job)
    flat = np.concatenate([d.ravel() for d in res.delta])
    # clipped to 0.01, plus noise of std 1.0 * 0.01 / sqrt(4) per coordinate
    assert np.std(flat) == pytest.approx(0.005, rel=0.6)
    assert res.metrics["epsilon"] > 0

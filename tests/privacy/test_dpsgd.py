"""Sample-level DP-SGD: calibration, clipping oracle, statistical noise test, learning, Opacus' view."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dp_accounting import pld
from opacus.accountants import PRVAccountant, RDPAccountant

from fedcore.clients.trainer import TrainConfig, evaluate
from fedcore.config import load_site
from fedcore.data import prepare_site
from fedcore.errors import ConfigError, PrivacyError
from fedcore.models import build_model
from fedcore.privacy import accounting
from fedcore.privacy import dpsgd as D
from fedcore.privacy.mechanisms import PrivacyWarning

CFG = D.DpSgdConfig(epsilon=2.0, delta=1e-5, max_grad_norm=1.0)


def _plan(cfg: D.DpSgdConfig = CFG, **kw: int) -> D.DpSgdPlan:
    args = {"num_examples": 200, "batch_size": 4, "rounds": 5, "local_steps": 10} | kw
    return D.plan_dpsgd(cfg, **args)


def test_config_reports_all_problems() -> None:
    with pytest.raises(ConfigError) as err:
        D.DpSgdConfig(epsilon=-1.0, delta=2.0, max_grad_norm=0.0, accountant="x")  # type: ignore[arg-type]
    for what in ("epsilon", "delta", "max_grad_norm", "accountant"):
        assert what in str(err.value)
    with pytest.raises(ConfigError, match=r"batch_size.*rounds"):
        D.plan_dpsgd(CFG, num_examples=10, batch_size=11, rounds=0, local_steps=1)


def test_calibrated_plan_spends_just_under_target() -> None:
    plan = _plan()
    assert plan.steps == 50 and plan.sample_rate == pytest.approx(0.02)
    eps = accounting.epsilon(plan.events(), delta=CFG.delta)
    assert 0.99 * CFG.epsilon <= eps <= CFG.epsilon
    oracle = pld.PLDAccountant(value_discretization_interval=accounting.PLD_DISCRETIZATION)
    assert eps == pytest.approx(oracle.compose(plan.events()[0]).get_epsilon(CFG.delta), rel=1e-9)
    per_round = [plan.round_event()] * plan.rounds
    assert accounting.epsilon(per_round, delta=CFG.delta) == pytest.approx(eps, rel=1e-6)


def test_opacus_accountants_agree_roughly() -> None:
    """Opacus' PRV is close to our PLD; its RDP is a looser upper bound (never below ours)."""
    plan = _plan()
    ours = accounting.epsilon(plan.events(), delta=CFG.delta)
    views = {}
    for acc in (RDPAccountant(), PRVAccountant()):
        for _ in range(plan.steps):  # the public API, never the accountant's history
            acc.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
        views[type(acc).__name__] = acc.get_epsilon(delta=CFG.delta)
    assert views["PRVAccountant"] == pytest.approx(ours, rel=0.05)
    assert ours <= views["RDPAccountant"] <= 1.5 * ours


@pytest.mark.parametrize("spec", [{"name": "logreg"}, {"name": "mlp", "hidden": [8, 4]}])
def test_clipped_sum_matches_naive_loop_and_opacus(spec: dict[str, object]) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(23, 5) * 4, (torch.rand(23) < 0.5).float()
    cfg = TrainConfig(lr=0.1, batch_size=4, pos_weight=3.0)
    model = build_model(spec, 5, seed=1)
    grads = [
        torch.autograd.grad(D._losses(model(x[i : i + 1]), y[i : i + 1], cfg).sum(), list(model.parameters()))
        for i in range(len(x))
    ]
    norms = [float(torch.sqrt(sum((t**2).sum() for t in g))) for g in grads]
    clip = float(np.median(norms))  # about half the rows are clipped
    naive = [
        sum(min(1.0, clip / (nm + 1e-6)) * g[k] for g, nm in zip(grads, norms, strict=True))
        for k in range(len(grads[0]))
    ]
    fast = D._linear_clipped_sum(model, x, y, cfg, clip)
    clipper = D._OpacusClipper(model, "hooks", clip, 4)
    ref = clipper(x, y, cfg)
    clipper.close()
    for a, b, c in zip(fast, naive, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6)
    # one example's contribution is bounded by C, however large its gradient
    one = D._linear_clipped_sum(model, x[:1] * 1e4, y[:1], cfg, 0.3)
    assert math.sqrt(sum(float((t**2).sum()) for t in one)) <= 0.3 * (1 + 1e-5)


@pytest.mark.parametrize("secure", [True, False])
def test_noise_std_on_zero_gradient(secure: bool) -> None:
    """All-zero inputs and lr=1: the weights move by pure noise, std z C / batch (bias has a gradient)."""
    cfg_dp = D.DpSgdConfig(epsilon=2.0, delta=1e-5, max_grad_norm=0.5, secure=secure)
    plan = D.plan_dpsgd(cfg_dp, num_examples=100, batch_size=10, rounds=1, local_steps=200)
    model = torch.nn.Linear(500, 1)
    before = model.weight.detach().clone()
    x, y = np.zeros((100, 500), np.float32), np.ones(100, np.float32)
    cfg = TrainConfig(lr=1.0, batch_size=10)
    if secure:
        D.train_steps_dp(model, x, y, cfg, plan=plan, steps=200)
    else:
        with pytest.warns(PrivacyWarning, match="REPRODUCIBLE"):
            D.train_steps_dp(model, x, y, cfg, plan=plan, steps=200, seed=7)
    step_noise = (model.weight.detach() - before).flatten() / math.sqrt(200)  # sum of 200 steps
    expected = plan.noise_multiplier * 0.5 / 10
    # 500 weights: the sample std has relative standard error 1/sqrt(2*500) ~ 3.2%; allow 5 SE
    assert float(step_noise.std()) == pytest.approx(expected, rel=0.16)
    assert abs(float(step_noise.mean())) < 5 * expected / math.sqrt(500)


def test_refusals() -> None:
    plan = _plan()
    x, y = np.zeros((200, 3), np.float32), np.zeros(200, np.float32)
    cfg = TrainConfig(lr=0.1, batch_size=4)
    with pytest.raises(PrivacyError, match="cannot be seeded"):
        D.train_steps_dp(torch.nn.Linear(3, 1), x, y, cfg, plan=plan, steps=1, seed=1)
    with pytest.raises(PrivacyError, match=r"num_examples=200.*batch_size=4.*local_steps=10"):
        D.train_steps_dp(
            torch.nn.Linear(3, 1), x[:50], y[:50], TrainConfig(lr=0.1, batch_size=8), plan=plan, steps=11
        )
    with pytest.raises(ConfigError, match="linear"):
        D.train_steps_dp(
            torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Tanh()),
            x,
            y,
            cfg,
            plan=plan,
            steps=1,
            backend="linear",
        )


def test_poisson_sampler_distribution_and_empty_batches() -> None:
    src = D._Source(secure=True, seed=None)
    sizes = np.array([len(src.poisson_batch(400, 0.01)) for _ in range(4000)])
    assert sizes.mean() == pytest.approx(4.0, abs=0.15)  # SE 0.032
    assert sizes.var() == pytest.approx(3.96, rel=0.1)
    assert (sizes == 0).mean() == pytest.approx(math.exp(-4), abs=0.01)  # empty batches occur
    plan = D.plan_dpsgd(CFG, num_examples=40, batch_size=1, rounds=1, local_steps=30)
    model = torch.nn.Linear(2, 1)
    D.train_steps_dp(
        model,
        np.ones((40, 2), np.float32),
        np.ones(40, np.float32),
        TrainConfig(lr=0.1, batch_size=1),
        plan=plan,
        steps=30,
    )
    assert torch.isfinite(model.weight).all()


@pytest.mark.parametrize("backend", ["linear", "opacus-hooks"])
def test_dpsgd_still_learns_on_cleveland(backend: D.DpSgdBackend) -> None:
    data = prepare_site(load_site("examples/medical/sites/cleveland.toml"))
    cfg = TrainConfig(lr=0.1, batch_size=8)
    dp = D.DpSgdConfig(epsilon=4.0, delta=1e-5, max_grad_norm=1.0, secure=False)
    plan = D.plan_dpsgd(dp, num_examples=len(data.x_train), batch_size=8, rounds=4, local_steps=100)
    model = build_model({"name": "logreg"}, data.x_train.shape[1], seed=0)
    with pytest.warns(PrivacyWarning):
        for r in range(plan.rounds):
            D.train_steps_dp(
                model, data.x_train, data.y_train, cfg, plan=plan, steps=100, seed=r, backend=backend
            )
    acc = evaluate(model, data.x_test, data.y_test)["accuracy"]
    chance = max(data.y_test.mean(), 1 - data.y_test.mean())
    assert acc > chance + 0.1
    assert not hasattr(next(model.parameters()), "grad_sample")

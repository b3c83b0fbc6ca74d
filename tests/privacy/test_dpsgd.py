"""Sample-level DP-SGD: calibration, clipping oracle, statistical noise test, learning, Opacus' view."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from dp_accounting import pld
from opacus.accountants import PRVAccountant, RDPAccountant
from scipy import stats
from torch.optim.optimizer import register_optimizer_step_post_hook

from fedcore.clients.trainer import evaluate
from fedcore.config import TrainConfig, load_site
from fedcore.data import prepare_site
from fedcore.errors import ConfigError, PrivacyError
from fedcore.models import build_model
from fedcore.privacy import accounting
from fedcore.privacy import dpsgd as D
from fedcore.privacy import grad_sample as G
from fedcore.privacy import rng as R
from fedcore.privacy.rng import PrivacyWarning, seeded_source

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
        torch.autograd.grad(G.losses(model(x[i : i + 1]), y[i : i + 1], cfg).sum(), list(model.parameters()))
        for i in range(len(x))
    ]
    norms = [float(torch.cat([t.flatten() for t in g]).norm()) for g in grads]
    clip = float(np.median(norms))  # about half the rows are clipped
    naive = [
        sum(min(1.0, clip / (nm + 1e-6)) * g[k] for g, nm in zip(grads, norms, strict=True))
        for k in range(len(grads[0]))
    ]
    fast = G.linear_clipped_sum(model, x, y, cfg, clip)
    clipper = G.OpacusClipper(model, "hooks", clip, 4)
    ref = clipper(x, y, cfg)
    clipper.close()
    for a, b, c in zip(fast, naive, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6)
    # one example's contribution is bounded by C, however large its gradient
    one = G.linear_clipped_sum(model, x[:1] * 1e4, y[:1], cfg, 0.3)
    assert math.sqrt(sum(float((t**2).sum()) for t in one)) <= 0.3 * (1 + 1e-5)


@pytest.mark.parametrize("secure", [True, False])
def test_noise_std_on_zero_gradient(secure: bool) -> None:
    """All-zero inputs and lr=1: the weights move by pure noise, std z C / batch (bias has a gradient)."""
    cfg_dp = D.DpSgdConfig(epsilon=2.0, delta=1e-5, max_grad_norm=0.5)
    plan = D.plan_dpsgd(cfg_dp, num_examples=100, batch_size=10, rounds=1, local_steps=200)
    model = torch.nn.Linear(500, 1)
    before = model.weight.detach().clone()
    x, y = np.zeros((100, 500), np.float32), np.ones(100, np.float32)
    cfg = TrainConfig(lr=1.0, batch_size=10)
    if secure:
        D.train_steps_dp(model, x, y, cfg, plan=plan, steps=200)
    else:
        with pytest.warns(PrivacyWarning, match="REPRODUCIBLE"):
            source = seeded_source(7)
        D.train_steps_dp(model, x, y, cfg, plan=plan, steps=200, source=source)
    step_noise = (model.weight.detach() - before).flatten() / math.sqrt(200)  # sum of 200 steps
    expected = plan.noise_multiplier * 0.5 / 10
    # 500 weights: the sample std has relative standard error 1/sqrt(2*500) ~ 3.2%; allow 5 SE
    assert float(step_noise.std()) == pytest.approx(expected, rel=0.16)
    assert abs(float(step_noise.mean())) < 5 * expected / math.sqrt(500)


def test_refusals() -> None:
    plan = _plan()
    x, y = np.zeros((200, 3), np.float32), np.zeros(200, np.float32)
    cfg = TrainConfig(lr=0.1, batch_size=4)
    with pytest.raises(PrivacyError, match=r"batch_size=4.*local_steps=10"):
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
    src = R.secure_source()
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
    dp = D.DpSgdConfig(epsilon=4.0, delta=1e-5, max_grad_norm=1.0)
    plan = D.plan_dpsgd(dp, num_examples=len(data.x_train), batch_size=8, rounds=4, local_steps=100)
    model = build_model({"name": "logreg"}, data.x_train.shape[1], seed=0)
    with pytest.warns(PrivacyWarning):
        source = seeded_source(0)
    for _ in range(plan.rounds):
        D.train_steps_dp(
            model, data.x_train, data.y_train, cfg, plan=plan, steps=100, source=source, backend=backend
        )
    acc = evaluate(model, data.x_test, data.y_test)["accuracy"]
    chance = max(data.y_test.mean(), 1 - data.y_test.mean())
    assert acc > chance + 0.1
    assert not hasattr(next(model.parameters()), "grad_sample")


# --- vectorised randomness and the chunked training loop --------------------------------------

N_DRAWS = 200_000
# The sample std of N draws has relative standard error 1/sqrt(2N) = 0.16%; 1% is > 6 SE.
STD_TOL = 0.01


def test_secure_source_is_an_aes_ctr_csprng_and_never_repeats() -> None:
    src = R.secure_source()
    assert src.gen is None and isinstance(src.stream, R.AesCtrStream)
    a, b = R.secure_source().stream, src.stream
    assert a is not None and b is not None
    w1, w2 = a.words(1024), b.words(1024)
    assert not np.array_equal(w1, w2) and not np.array_equal(w1, a.words(1024))
    bits = np.unpackbits(b.words(N_DRAWS // 8).view(np.uint8))
    assert abs(bits.mean() - 0.5) < 5 * 0.5 / math.sqrt(len(bits))


def test_aes_stream_rekeys_from_os_urandom(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.urandom

    def spy(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(R.AesCtrStream, "REKEY_BYTES", 64)
    monkeypatch.setattr("fedcore.privacy.rng.os.urandom", spy)
    stream = R.AesCtrStream()
    assert calls == [32, 16]  # AES-256 key and initial counter
    words = stream.words(100)  # 800 bytes: 13 keys of 64 bytes
    assert calls == [32, 16] * 13 and len(words) == 100 and len(set(words.tolist())) == 100


@pytest.mark.parametrize("std", [0.5, 3.0])
def test_secure_vectorised_noise_std_mean_and_shape(std: float) -> None:
    src = R.secure_source()
    out = src.noise_(torch.empty(N_DRAWS, dtype=torch.float32), std)  # spans several blocks
    x = out.double().numpy()
    assert out.dtype == torch.float32 and np.isfinite(x).all()
    assert abs(x.std() / std - 1) < STD_TOL
    assert abs(x.mean()) < 5 * std / math.sqrt(N_DRAWS)
    z = x / x.std()
    assert abs(np.mean(z**4) - 3.0) < 0.1  # kurtosis SE ~ sqrt(24 / N) = 0.011
    # Kolmogorov-Smirnov distance to N(0, std^2): ~1.36 / sqrt(N) = 0.003 at the 5% level
    ks = stats.kstest(x, "norm", args=(0.0, std)).statistic
    assert ks < 0.01
    # block boundaries carry no structure: the two halves of a block pair are uncorrelated
    b = R.Source._BLOCK
    assert abs(np.corrcoef(x[:b], x[b : 2 * b])[0, 1]) < 5 / math.sqrt(b)


def test_batched_poisson_inclusion_frequencies_match_sample_rate() -> None:
    src = R.secure_source()
    n, q, steps = 50, 0.1, 4000
    batches = src.poisson_batches(n, q, steps)
    assert len(batches) == steps
    for idx in batches[:200]:
        assert bool((idx[1:] > idx[:-1]).all()) and (len(idx) == 0 or 0 <= int(idx[0]) <= int(idx[-1]) < n)
    member = np.zeros((steps, n))
    for t, idx in enumerate(batches):
        member[t, idx.numpy()] = 1
    se_total = math.sqrt(q * (1 - q) / (n * steps))
    assert abs(member.mean() - q) < 5 * se_total
    per_row = member.mean(0)  # each row: Binomial(steps, q) / steps, SE 0.0047
    assert np.abs(per_row - q).max() < 5 * math.sqrt(q * (1 - q) / steps)
    sizes = member.sum(1)
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.15)  # SE of the variance ~2.3%
    # independent across steps and rows: no lag-1 correlation of sizes or of a row's membership
    assert abs(np.corrcoef(sizes[:-1], sizes[1:])[0, 1]) < 5 / math.sqrt(steps)
    assert abs(np.corrcoef(member[:-1].ravel(), member[1:].ravel())[0, 1]) < 5 / math.sqrt(steps * n)
    assert len(src.poisson_batches(7, 1.0, 3)) == 3 and src.poisson_batches(7, 1.0, 1)[0].tolist() == list(
        range(7)
    )


def test_exactly_steps_noisy_steps_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "_NOISE_CHUNK", 7)  # 4 parameters: chunks of 1 step, then of 2 (13 = 6*2 + 1)
    plan = D.plan_dpsgd(CFG, num_examples=30, batch_size=3, rounds=1, local_steps=13)
    counted: list[int] = []
    handle = register_optimizer_step_post_hook(lambda *_: counted.append(1))
    try:
        model = torch.nn.Linear(3, 1)
        x, y = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32), np.ones(30, np.float32)
        D.train_steps_dp(model, x, y, TrainConfig(lr=0.1, batch_size=3), plan=plan, steps=13)
        assert len(counted) == 13
        monkeypatch.setattr(D, "_NOISE_CHUNK", 9)
        D.train_steps_dp(model, x, y, TrainConfig(lr=0.1, batch_size=3), plan=plan, steps=13)
        assert len(counted) == 26
    finally:
        handle.remove()
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()


def test_clipped_sum_general_linear_relu_stacks_and_out_buffers() -> None:
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.ReLU(),
        torch.nn.Linear(4, 6),
        torch.nn.Linear(6, 5, bias=False),
        torch.nn.ReLU(),
        torch.nn.ReLU(),
        torch.nn.Linear(5, 1),
    )
    x, y = torch.randn(17, 4) * 3, (torch.rand(17) < 0.5).float()
    cfg = TrainConfig(lr=0.1, batch_size=4, pos_weight=0.5)
    params = list(model.parameters())
    grads = [
        torch.autograd.grad(G.losses(model(x[i : i + 1]), y[i : i + 1], cfg).sum(), params) for i in range(17)
    ]
    norms = [float(torch.cat([t.flatten() for t in g]).norm()) for g in grads]
    clip = float(np.median(norms))
    naive = [
        sum(min(1.0, clip / (nm + 1e-6)) * g[k] for g, nm in zip(grads, norms, strict=True))
        for k in range(len(params))
    ]
    out = [torch.full_like(p, float("nan")) for p in params]
    fast = G.linear_clipped_sum(model, x, y, cfg, clip, out)
    for a, b, o in zip(fast, naive, out, strict=True):
        assert a is o
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in params)  # no autograd side effects
    # the DP loop's form: 1 / batch folded into the clip factors, first-layer norms given per row
    # (behind the leading ReLU: ||relu(x_i)||^2 + 1)
    sq = G.input_sq_norms(model, x)
    torch.testing.assert_close(sq, (torch.relu(x) ** 2).sum(1) + 1.0)
    scaled = G.linear_clipped_sum(model, x, y, cfg, clip, scale=0.25, first_sq=sq)
    for a, b in zip(scaled, naive, strict=True):
        torch.testing.assert_close(a, 0.25 * b, rtol=1e-5, atol=1e-6)
    no_bias = torch.nn.Linear(4, 1, bias=False)
    torch.testing.assert_close(G.input_sq_norms(no_bias, x), (x**2).sum(1))


@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_logreg_fast_path_matches_the_general_clipped_and_plain_sums(pos_weight: float | None) -> None:
    """The one-logit Linear fast path (the DP loop's logistic regression) gives the general
    closed form's clipped sum times the scale, and the same plain gradient sum."""
    torch.manual_seed(4)
    model = build_model({"name": "logreg"}, 5, seed=2)
    assert G.is_logreg(G.model_layers(model))
    x, y = torch.randn(23, 5) * 4, (torch.rand(23) < 0.5).float()
    cfg = TrainConfig(lr=0.1, batch_size=4, pos_weight=pos_weight)
    general = G.linear_clipped_sum(model, x, y, cfg, 0.7)
    rows = G.logreg_row_norms(x, 0.7, 0.25)
    out = [torch.full_like(p, float("nan")) for p in model.parameters()]
    fast = G.logreg_clipped_sum(G.model_layers(model)[0], x, y, cfg, rows, 0.7, 0.25, out)
    assert all(bool((a != 0).any()) for a in general)  # a real gradient
    for a, b, o in zip(fast, general, out, strict=True):
        assert a is o
        torch.testing.assert_close(a, 0.25 * b, rtol=1e-5, atol=1e-7)
    plain = [torch.empty_like(p) for p in model.parameters()]
    G.linear_grad_sum(model, x, y, cfg, plain)
    for a, b in zip(plain, G.linear_grad_sum(model, x, y, cfg), strict=True):  # general path
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with_hidden = build_model({"name": "mlp", "hidden": [3]}, 5, seed=2)
    assert not G.is_logreg(G.model_layers(with_hidden))

"""The vectorised per-example clipped sums (``ghost`` backend) against a naive loop and Opacus."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedcore.config import TrainConfig
from fedcore.errors import ConfigError
from fedcore.privacy import dpsgd as D
from fedcore.privacy import ghost as H
from fedcore.privacy import grad_sample as G
from fedcore.privacy.rng import PrivacyWarning, seeded_source


def small_cnn(out: int = 1) -> nn.Sequential:
    """Conv 1->16 3x3, pool, Conv 16->32 3x3, pool, Linear -> ``out`` on 1x28x28 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 5 * 5, out),
    )


def strided() -> nn.Sequential:
    """Padding, stride, dilation, no bias, average pooling, tanh and a hidden Linear."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False),
        nn.Tanh(),
        nn.Conv2d(4, 3, (2, 3), dilation=(1, 2), padding=(1, 0)),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 1, 5),
        nn.ReLU(),
        nn.Linear(5, 1),
    )


def _naive(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, clip: float | None):
    params = list(model.parameters())
    grads = [
        torch.autograd.grad(G.losses(model(x[i : i + 1]), y[i : i + 1], cfg).sum(), params)
        for i in range(len(x))
    ]
    norms = [float(torch.cat([t.flatten() for t in g]).norm()) for g in grads]
    clip = float(np.median(norms)) if clip is None else clip
    sums = [
        sum(min(1.0, clip / (nm + 1e-6)) * g[k] for g, nm in zip(grads, norms, strict=True))
        for k in range(len(params))
    ]
    return clip, sums


@pytest.mark.parametrize(("build", "shape"), [(small_cnn, (1, 28, 28)), (strided, (2, 9, 12))])
def test_ghost_matches_naive_loop_and_opacus(build, shape) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build()
    x, y = torch.randn(13, *shape) * 3, (torch.rand(13) < 0.5).float()
    cfg = TrainConfig(lr=0.1, batch_size=4, pos_weight=2.0)
    assert H.ghost_supported(model) and not G.linear_supported(model)
    assert D.choose_backend(model) == "ghost"
    clip, naive = _naive(model, x, y, cfg, None)  # the median norm: about half the rows clipped
    fast = H.ghost_clipped_sum(model, x, y, cfg, clip)
    clipper = G.OpacusClipper(model, "hooks", clip, 4)
    ref = clipper(x, y, cfg)
    clipper.close()
    assert len(fast) == len(naive) == len(list(model.parameters()))
    for a, b, c in zip(fast, naive, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # no weight gradients accumulated
    # one example's contribution is bounded by C, however large its gradient
    one = H.ghost_clipped_sum(model, x[:1] * 1e4, y[:1], cfg, 0.3)
    assert math.sqrt(sum(float((t**2).sum()) for t in one)) <= 0.3 * (1 + 1e-5)


def test_ghost_equals_linear_backend_on_an_mlp() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    x, y = torch.randn(9, 6), (torch.rand(9) < 0.5).float()
    cfg = TrainConfig(lr=0.1, batch_size=4)
    for a, b in zip(
        H.ghost_clipped_sum(model, x, y, cfg, 0.2), G.linear_clipped_sum(model, x, y, cfg, 0.2), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_unsupported_layers_fall_back_to_opacus() -> None:
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(2, 1))
    inplace = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(2, 1))
    normed = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.Flatten(), nn.Linear(2, 1))
    for model in (grouped, inplace, normed):
        assert not H.ghost_supported(model)
        assert D.choose_backend(model) == "opacus-hooks"


def test_dpsgd_trains_a_cnn_with_the_ghost_backend() -> None:
    """The ghost backend learns a separable image task under DP-SGD (sampling and noise seeded)."""
    torch.manual_seed(0)
    n = 160
    y = (torch.rand(n) < 0.5).float()
    x = torch.randn(n, 1, 28, 28) * 0.3
    x[:, :, 4:12, 4:12] += 2.0 * y.view(-1, 1, 1, 1)  # a bright patch marks the positives
    model = small_cnn()
    cfg = TrainConfig(lr=0.5, batch_size=32)
    plan = D.plan_dpsgd(
        D.DpSgdConfig(epsilon=8.0, delta=1e-5, max_grad_norm=1.0),
        num_examples=n,
        batch_size=32,
        rounds=1,
        local_steps=25,
    )
    with pytest.warns(PrivacyWarning):
        source = seeded_source(0, what="test")
    D.train_steps_dp(model, x.numpy(), y.numpy(), cfg, plan=plan, steps=25, source=source, backend="auto")
    with torch.no_grad():
        acc = float(((model(x).squeeze(-1) > 0).float() == y).float().mean())
    assert acc > 0.9


@pytest.mark.parametrize(
    "build", [small_cnn, lambda: nn.Sequential(nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 1))]
)
def test_frozen_layers_train_under_dpsgd_and_stay_frozen(build) -> None:  # type: ignore[no-untyped-def]
    """Fine-tuning: a frozen first layer is neither clipped into the update nor changed; the rest trains.
    (The vectorised backends assume every parameter trains, so "auto" hands such a model to Opacus.)"""
    torch.manual_seed(0)
    model = build()
    first = next(m for m in model if isinstance(m, nn.Linear | nn.Conv2d))
    for p in first.parameters():
        p.requires_grad_(False)
    frozen = [p.detach().clone() for p in first.parameters()]
    trained = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    assert not G.linear_supported(model) and not H.ghost_supported(model)
    assert D.choose_backend(model) == "opacus-hooks"
    n = 64
    x, y = torch.randn(n, 1, 28, 28), (torch.rand(n) < 0.5).float()
    if isinstance(first, nn.Linear):
        x = x.flatten(1)
    cfg = TrainConfig(lr=0.5, batch_size=16)
    dp = D.DpSgdConfig(epsilon=8.0, delta=1e-5, max_grad_norm=1.0)
    plan = D.plan_dpsgd(dp, num_examples=n, batch_size=16, rounds=1, local_steps=3)
    with pytest.warns(PrivacyWarning):
        source = seeded_source(0, what="test")
    D.train_steps_dp(model, x.numpy(), y.numpy(), cfg, plan=plan, steps=3, source=source, backend="auto")
    for before, p in zip(frozen, first.parameters(), strict=True):
        assert torch.equal(before, p)
    after = [p for p in model.parameters() if p.requires_grad]
    assert all(not torch.equal(b, a) for b, a in zip(trained, after, strict=True))
    for backend in ("linear", "ghost"):
        with pytest.raises(ConfigError, match=backend):
            D.train_steps_dp(
                model, x.numpy(), y.numpy(), cfg, plan=plan, steps=1, source=source, backend=backend
            )

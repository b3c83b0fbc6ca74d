"""Sample-level DP-SGD for a site's local training (Abadi et al. 2016, "Deep Learning with
Differential Privacy", Alg. 1), accounted by fedcore's ``accounting`` module.

Every step: Poisson sampling (each row independently with probability ``q = batch_size / n``),
per-example gradients clipped to L2 norm ``C``, summed, N(0, (z C)^2) noise added, divided by the
expected batch size ``q n``, then the site's optimizer steps. An empty Poisson batch still takes a
(noise-only) step, so exactly ``steps`` noised releases happen, as ``plan.events()`` accounts.
The noise multiplier ``z`` is calibrated by ``plan_dpsgd`` before any training (``steps`` = rounds x
local steps). The FedProx term is data independent and is added after noising (post-processing).

Backends (``DpSgdBackend``): ``"linear"`` computes per-example gradient norms and clipped sums in
closed form for models made only of ``nn.Linear``/``nn.ReLU`` (one backward to the layer outputs;
``||g_i a_i^T||^2 = ||g_i||^2 ||a_i||^2``, the ghost-norm identity of Goodfellow 2015 / Li et al.
2022, Sec. 4); ``"opacus-hooks"`` / ``"opacus-functorch"`` / ``"opacus-ew"`` use Opacus'
``GradSampleModule`` and ``DPOptimizer.clip_and_accumulate`` for any Opacus-supported model. Opacus'
own accountant and data loader are not used: fedcore's ``accounting`` is the accountant, and the
sampling and noise below draw from fedcore's random sources.

Randomness: with ``secure=True`` the Poisson sampling and the noise use bits from ``os.urandom``
(the OS CSPRNG), turned into uniforms (53 bits) and Gaussians (Box-Muller) vectorised, with Opacus'
floating-point mitigation (sum of 4 draws / 2; Holohan & Braghin 2021, Sec. 5). ``secure=False``
uses a torch ``Generator`` (seeded or not) and emits ``PrivacyWarning``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from dp_accounting import dp_event
from numpy.typing import NDArray
from opacus.grad_sample import get_gsm_class
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.nn import functional as F

from fedcore.clients.trainer import TrainConfig
from fedcore.errors import ConfigError, PrivacyError
from fedcore.privacy.accounting import AccountantName, calibrate_dpsgd_noise, dpsgd_event
from fedcore.privacy.mechanisms import PrivacyWarning

__all__ = ["DpSgdBackend", "DpSgdConfig", "DpSgdPlan", "linear_supported", "plan_dpsgd", "train_steps_dp"]

DpSgdBackend = Literal["auto", "linear", "opacus-hooks", "opacus-functorch", "opacus-ew"]
_OPACUS_MODES = {"opacus-hooks": "hooks", "opacus-functorch": "functorch", "opacus-ew": "ew"}
_STABILITY = 1e-6  # Opacus' clip factor C / (norm + 1e-6)


@dataclass(frozen=True)
class DpSgdConfig:
    """A site's sample-level DP-SGD policy (from its own config; the coordinator may only tighten).

    Parameters
    ----------
    epsilon, delta
        Target (epsilon, delta) for the whole job (all rounds), add-or-remove-one neighbours.
    max_grad_norm
        Per-example L2 clipping norm ``C``.
    accountant
        ``"pld"`` (default) or ``"rdp"``, used for calibration and reporting.
    secure
        Draw sampling and noise from the OS CSPRNG (production). ``False`` warns.
    """

    epsilon: float
    delta: float
    max_grad_norm: float
    accountant: AccountantName = "pld"
    secure: bool = True

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            problems.append(f"epsilon must be finite and > 0, got {self.epsilon}")
        if not 0 < self.delta < 1:
            problems.append(f"delta must be in (0, 1), got {self.delta}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            problems.append(f"max_grad_norm must be finite and > 0, got {self.max_grad_norm}")
        if self.accountant not in get_args(AccountantName):
            allowed = ", ".join(get_args(AccountantName))
            problems.append(f"accountant must be one of {allowed}, got {self.accountant!r}")
        if not isinstance(self.secure, bool):
            problems.append(f"secure must be a bool, got {self.secure!r}")
        if problems:
            raise ConfigError("invalid DP-SGD config: " + "; ".join(problems))


@dataclass(frozen=True)
class DpSgdPlan:
    """A calibrated DP-SGD job: the noise multiplier and what it will spend. Build with ``plan_dpsgd``."""

    config: DpSgdConfig
    noise_multiplier: float
    sample_rate: float
    batch_size: int
    num_examples: int
    rounds: int
    local_steps: int

    @property
    def steps(self) -> int:
        """Optimizer steps of the whole job: ``rounds * local_steps``."""
        return self.rounds * self.local_steps

    def events(self) -> list[dp_event.DpEvent]:
        """The whole job as one ``dp_accounting`` event (in a list, as ``accounting.epsilon`` takes)."""
        return [self._event(self.steps)]

    def round_event(self) -> dp_event.DpEvent:
        """One round's release (``local_steps`` steps), for the site's ledger."""
        return self._event(self.local_steps)

    def _event(self, steps: int) -> dp_event.DpEvent:
        return dpsgd_event(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=steps)


def plan_dpsgd(
    cfg: DpSgdConfig, *, num_examples: int, batch_size: int, rounds: int, local_steps: int
) -> DpSgdPlan:
    """Calibrate the smallest noise multiplier meeting ``cfg.epsilon`` for ``rounds * local_steps`` steps.

    ``sample_rate = batch_size / num_examples`` (``batch_size`` is the *expected* Poisson batch).
    Raises ``ConfigError`` listing every invalid argument.
    """
    problems: list[str] = []
    if num_examples < 1:
        problems.append(f"num_examples must be >= 1, got {num_examples}")
    if not 1 <= batch_size <= max(num_examples, 1):
        problems.append(f"batch_size must be in [1, num_examples={num_examples}], got {batch_size}")
    if rounds < 1:
        problems.append(f"rounds must be >= 1, got {rounds}")
    if local_steps < 1:
        problems.append(f"local_steps must be >= 1, got {local_steps}")
    if problems:
        raise ConfigError("cannot plan DP-SGD: " + "; ".join(problems))
    sample_rate = batch_size / num_examples
    sigma = calibrate_dpsgd_noise(
        target_epsilon=cfg.epsilon,
        delta=cfg.delta,
        sample_rate=sample_rate,
        steps=rounds * local_steps,
        accountant=cfg.accountant,
    )
    return DpSgdPlan(cfg, sigma, sample_rate, batch_size, num_examples, rounds, local_steps)


# --- randomness -----------------------------------------------------------------------------


class _Source:
    """Uniforms and standard normals (float64), from the OS CSPRNG or a torch ``Generator``."""

    def __init__(self, *, secure: bool, seed: int | None) -> None:
        self.secure = secure
        self.gen = None if secure else torch.Generator()
        if self.gen is not None:
            self.gen.manual_seed(seed) if seed is not None else self.gen.seed()

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` uniforms in (0, 1]."""
        if self.gen is not None:
            return 1.0 - torch.rand(n, generator=self.gen, dtype=torch.float64)
        words = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
        return torch.from_numpy(((words >> np.uint64(11)) + 1).astype(np.float64) * 2.0**-53)

    def normal(self, n: int) -> torch.Tensor:
        """``n`` N(0, 1) draws; secure: Box-Muller, and (z1 + z2 + z3 + z4) / 2 against FP attacks."""
        if self.gen is not None:
            return torch.randn(n, generator=self.gen, dtype=torch.float64)
        m = -(-4 * n // 2)
        u1, u2 = self.uniform(2 * m).view(2, m)
        r, theta = torch.sqrt(-2.0 * torch.log(u1)), 2.0 * math.pi * u2
        z = torch.cat([r * torch.cos(theta), r * torch.sin(theta)])[: 4 * n]
        return z.view(4, n).sum(0) / 2.0

    def poisson_batch(self, n: int, q: float) -> torch.Tensor:
        """Sorted indices of a Poisson sample: each of ``n`` rows independently with prob. ``q``.

        Gaps between included rows are i.i.d. Geometric(q), drawn by inversion, so a step costs
        O(q n) draws instead of the O(n) of a Bernoulli mask (same distribution).
        """
        if q >= 1.0:
            return torch.arange(n)
        log1mq, parts, pos = math.log1p(-q), [], -1
        while True:
            k = int(q * n + 4 * math.sqrt(q * n) + 8)
            gaps = torch.floor(torch.log(self.uniform(k)) / log1mq).to(torch.int64) + 1
            idx = pos + torch.cumsum(gaps, 0)
            parts.append(idx[idx < n])
            if int(idx[-1]) >= n:
                return torch.cat(parts)
            pos = int(idx[-1])


# --- per-example clipped sums ---------------------------------------------------------------


def linear_supported(model: nn.Module) -> bool:
    """Whether ``model`` is ``nn.Linear`` or an ``nn.Sequential`` of ``nn.Linear``/``nn.ReLU``."""
    layers = list(model) if isinstance(model, nn.Sequential) else [model]
    return all(isinstance(m, nn.Linear | nn.ReLU) for m in layers) and isinstance(layers[-1], nn.Linear)


def _losses(logits: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    pw = None if cfg.pos_weight is None else torch.tensor([cfg.pos_weight])
    return F.binary_cross_entropy_with_logits(logits.squeeze(-1), y, pos_weight=pw, reduction="none")


def _linear_clipped_sum(
    model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, cfg: TrainConfig, clip: float
) -> list[torch.Tensor]:
    """Sum over the batch of per-example gradients clipped to ``clip``, in ``parameters()`` order."""
    layers = list(model) if isinstance(model, nn.Sequential) else [model]
    inputs, outputs, h = [], [], xb
    for layer in layers:
        if isinstance(layer, nn.Linear):
            inputs.append(h.detach())
            h = F.linear(h, layer.weight, layer.bias)
            outputs.append(h)
        else:
            h = torch.relu(h)
    backprops = torch.autograd.grad(_losses(h, yb, cfg).sum(), outputs)
    sq = torch.zeros(len(xb), dtype=xb.dtype)
    for a, g, layer in zip(inputs, backprops, (m for m in layers if isinstance(m, nn.Linear)), strict=True):
        g2 = g.pow(2).sum(1)
        sq += g2 * a.pow(2).sum(1) + (g2 if layer.bias is not None else 0.0)
    factor = (clip / (sq.sqrt() + _STABILITY)).clamp(max=1.0)
    sums: list[torch.Tensor] = []
    for a, g, layer in zip(inputs, backprops, (m for m in layers if isinstance(m, nn.Linear)), strict=True):
        gc = g * factor[:, None]
        sums.append(gc.T @ a)
        if layer.bias is not None:
            sums.append(gc.sum(0))
    return sums


class _OpacusClipper:
    """Per-example gradients from Opacus' ``GradSampleModule``; clipping by ``DPOptimizer``."""

    def __init__(self, model: nn.Module, mode: str, clip: float, batch_size: int) -> None:
        self.gsm = get_gsm_class(mode)(model, batch_first=True, loss_reduction="sum")
        inner = torch.optim.SGD(self.gsm.parameters(), lr=0.0)  # never steps; clipping only
        self.opt = DPOptimizer(
            inner,
            noise_multiplier=0.0,
            max_grad_norm=clip,
            expected_batch_size=batch_size,
            loss_reduction="sum",
        )

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, cfg: TrainConfig) -> list[torch.Tensor]:
        self.opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # inputs need no grad; the hook still sees the outputs
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            _losses(self.gsm(xb), yb, cfg).sum().backward()  # type: ignore[no-untyped-call]
        self.opt.clip_and_accumulate()
        sums = [p.summed_grad.detach().clone() for p in self.opt.params]
        self.opt.zero_grad(set_to_none=True)
        return sums

    def close(self) -> None:
        """Detach Opacus' hooks and per-sample attributes from the wrapped model."""
        self.gsm._close()


# --- training -------------------------------------------------------------------------------


def _check_inputs(x: NDArray[np.float32], cfg: TrainConfig, plan: DpSgdPlan, steps: int) -> None:
    problems: list[str] = []
    if len(x) != plan.num_examples:
        problems.append(f"the plan is for num_examples={plan.num_examples}, got {len(x)} rows; re-plan")
    if cfg.batch_size != plan.batch_size:
        problems.append(f"the plan is for batch_size={plan.batch_size}, got {cfg.batch_size}; re-plan")
    if not 0 <= steps <= plan.local_steps:
        problems.append(f"steps must be in [0, plan.local_steps={plan.local_steps}], got {steps}")
    if problems:
        raise PrivacyError("DP-SGD refused (the accounting would not hold): " + "; ".join(problems))


def _make_source(plan: DpSgdPlan, seed: int | None) -> _Source:
    if plan.config.secure:
        if seed is not None:
            raise PrivacyError(
                f"secure DP-SGD cannot be seeded, got seed={seed}; pass seed=None, or set "
                "DpSgdConfig(secure=False) for reproducible (non-production) experiments"
            )
    else:
        what = f"seeded with {seed}: REPRODUCIBLE" if seed is not None else "torch Generator"
        warnings.warn(
            f"DP-SGD sampling and noise use a non-secure rng ({what}); fine for experiments, NOT for "
            "production: use DpSgdConfig(secure=True).",
            PrivacyWarning,
            stacklevel=3,
        )
    return _Source(secure=plan.config.secure, seed=seed)


def train_steps_dp(
    model: nn.Module,
    x: NDArray[np.float32],
    y: NDArray[np.float32],
    cfg: TrainConfig,
    *,
    plan: DpSgdPlan,
    steps: int,
    seed: int | None = None,
    backend: DpSgdBackend = "auto",
) -> dict[str, float]:
    """Run exactly ``steps`` DP-SGD optimizer steps on ``model`` in place (one round's local work).

    Parameters
    ----------
    model, x, y, cfg
        As ``trainer.train_steps``; ``cfg.batch_size`` and ``len(x)`` must match the plan.
    plan
        From ``plan_dpsgd``; ``steps <= plan.local_steps``. Charge ``plan.round_event()`` per round.
    seed
        Only with ``DpSgdConfig(secure=False)`` (warns ``PrivacyWarning``); secure plans refuse one.
    backend
        ``"auto"``: ``"linear"`` when ``linear_supported(model)``, else ``"opacus-hooks"``.

    Returns
    -------
    dict
        Public quantities only (``steps``, ``noise_multiplier``, ``sample_rate``): the training
        loss is computed on private rows and is not released.
    """
    _check_inputs(x, cfg, plan, steps)
    source = _make_source(plan, seed)
    if backend == "auto":
        backend = "linear" if linear_supported(model) else "opacus-hooks"
    clip, n = plan.config.max_grad_norm, len(x)
    clipped: Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]]
    if backend == "linear":
        if not linear_supported(model):
            raise ConfigError(
                "backend 'linear' needs nn.Linear / nn.Sequential(Linear, ReLU); use 'opacus-hooks'"
            )
        clipped = lambda xb, yb: _linear_clipped_sum(model, xb, yb, cfg, clip)  # noqa: E731
    elif backend in _OPACUS_MODES:
        clipper = _OpacusClipper(model, _OPACUS_MODES[backend], clip, plan.batch_size)
        clipped = lambda xb, yb: clipper(xb, yb, cfg)  # noqa: E731
    else:
        raise ConfigError(f"unknown backend {backend!r}; allowed: {', '.join(get_args(DpSgdBackend))}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = cfg.make_optimizer(model)
    prox = [p.detach().clone() for p in params] if cfg.proximal_mu > 0 else None
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    try:
        for _ in range(steps):
            idx = source.poisson_batch(n, plan.sample_rate)
            sums = clipped(xt[idx], yt[idx]) if len(idx) else [torch.zeros_like(p) for p in params]
            _noisy_step_(opt, params, sums, source, plan, prox, cfg.proximal_mu)
    finally:
        if backend in _OPACUS_MODES:
            clipper.close()
    return {"steps": float(steps), "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate}


def _noisy_step_(
    opt: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    sums: Sequence[torch.Tensor],
    source: _Source,
    plan: DpSgdPlan,
    prox: Sequence[torch.Tensor] | None,
    mu: float,
) -> None:
    """grad = (clipped sum + N(0, (z C)^2)) / (q n) [+ mu (w - w_global)], then ``opt.step()``."""
    std = plan.noise_multiplier * plan.config.max_grad_norm
    noise = source.normal(sum(p.numel() for p in params)) * std
    offset = 0
    for i, (p, s) in enumerate(zip(params, sums, strict=True)):
        z = noise[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
        grad = (s + z) / plan.batch_size
        p.grad = grad + mu * (p.detach() - prox[i]) if prox is not None else grad
    opt.step()

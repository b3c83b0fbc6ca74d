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
2022, Sec. 4); ``"ghost"`` does the same for ``nn.Sequential`` models with ``nn.Conv2d`` layers,
pooling and other activations (``fedcore.privacy.ghost``: one autograd backward to the layer
outputs, im2col per-example gradients for convolutions); ``"opacus-hooks"`` / ``"opacus-functorch"``
/ ``"opacus-ew"`` use Opacus' ``GradSampleModule`` and ``DPOptimizer.clip_and_accumulate`` for any
Opacus-supported model. Opacus' own accountant and data loader are not used: fedcore's
``accounting`` is the accountant, and the sampling and noise below draw from fedcore's random
sources.

Randomness is an argument (``source``): by default the CSPRNG of ``fedcore.privacy.rng``
(AES-256-CTR keyed from the OS, Gaussians by the polar method with the four-draw floating-point
mitigation). The batches and noise of a chunk of steps are drawn ahead in one go (independent per
step), and the ``linear`` backend runs without autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from dp_accounting import dp_event
from numpy.typing import NDArray
from torch import nn

from fedcore.algorithms.base import GradCorrection
from fedcore.config.train import TrainConfig
from fedcore.errors import ConfigError, PrivacyError
from fedcore.privacy.accounting import AccountantName, calibrate_dpsgd_noise, dpsgd_event
from fedcore.privacy.ghost import ghost_clipped_sum, ghost_supported
from fedcore.privacy.grad_sample import (
    OpacusClipper,
    input_sq_norms,
    is_logreg,
    linear_clipped_sum,
    linear_supported,
    logreg_clipped_sum,
    logreg_row_norms,
    model_layers,
)
from fedcore.privacy.rng import Source, secure_source

__all__ = [
    "DpSgdBackend",
    "DpSgdConfig",
    "DpSgdPlan",
    "choose_backend",
    "linear_supported",
    "plan_dpsgd",
    "train_steps_dp",
]

DpSgdBackend = Literal["auto", "linear", "ghost", "opacus-hooks", "opacus-functorch", "opacus-ew"]
_OPACUS_MODES = {"opacus-hooks": "hooks", "opacus-functorch": "functorch", "opacus-ew": "ew"}
_NOISE_CHUNK = 1 << 21  # noise values drawn ahead at most (8 MiB in float32)


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
    """

    epsilon: float
    delta: float
    max_grad_norm: float
    accountant: AccountantName = "pld"

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
    cfg: DpSgdConfig,
    *,
    num_examples: int,
    batch_size: int,
    rounds: int,
    local_steps: int,
    others: Sequence[dp_event.DpEvent] = (),
) -> DpSgdPlan:
    """Calibrate the smallest noise multiplier meeting ``cfg.epsilon`` for ``rounds * local_steps`` steps.

    ``sample_rate = batch_size / num_examples`` (``batch_size`` is the *expected* Poisson batch).
    ``others``: the events of the plan's other releases; ``cfg.epsilon`` is then the total of those
    and DP-SGD composed (``PrivacyError`` when they alone reach it). Raises ``ConfigError`` listing
    every invalid argument.
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
        others=others,
    )
    return DpSgdPlan(cfg, sigma, sample_rate, batch_size, num_examples, rounds, local_steps)


# --- training -------------------------------------------------------------------------------


def choose_backend(model: nn.Module) -> DpSgdBackend:
    """The backend ``"auto"`` runs for ``model``: ``"linear"`` (Linear/ReLU stacks, no autograd),
    else ``"ghost"`` (Sequential of Linear/Conv2d/activation/pooling/flatten), else ``"opacus-hooks"``."""
    if linear_supported(model):
        return "linear"
    return "ghost" if ghost_supported(model) else "opacus-hooks"


def _check_inputs(cfg: TrainConfig, plan: DpSgdPlan, steps: int) -> None:
    """The accounting holds for any number of rows (each is sampled with probability ``q``);
    it needs the planned batch size and at most the planned steps."""
    problems: list[str] = []
    if cfg.batch_size != plan.batch_size:
        problems.append(f"the plan is for batch_size={plan.batch_size}, got {cfg.batch_size}; re-plan")
    if not 0 <= steps <= plan.local_steps:
        problems.append(f"steps must be in [0, plan.local_steps={plan.local_steps}], got {steps}")
    if problems:
        raise PrivacyError("DP-SGD refused (the accounting would not hold): " + "; ".join(problems))


def train_steps_dp(
    model: nn.Module,
    x: NDArray[np.float32],
    y: NDArray[np.float32],
    cfg: TrainConfig,
    *,
    plan: DpSgdPlan,
    steps: int,
    source: Source | None = None,
    backend: DpSgdBackend = "auto",
    correction: GradCorrection | None = None,
) -> dict[str, float]:
    """Run exactly ``steps`` DP-SGD optimizer steps on ``model`` in place (one round's local work).

    Parameters
    ----------
    model, x, y, cfg
        As ``trainer.train_steps``; ``cfg.batch_size`` and ``len(x)`` must match the plan.
    plan
        From ``plan_dpsgd``; ``steps <= plan.local_steps``. Charge ``plan.round_event()`` per round.
    source
        Where sampling and noise come from: ``None`` is a fresh ``secure_source()`` (production);
        ``fedcore.privacy.rng.seeded_source(seed)`` for reproducible experiments (warns).
    backend
        ``"auto"``: ``choose_backend(model)`` (``"linear"``, ``"ghost"`` or ``"opacus-hooks"``).
    correction
        A client algorithm's data-independent gradient term (``fedcore.algorithms``), added to the
        noised gradient before each step, as the FedProx term is: post-processing.

    Returns
    -------
    dict
        Public quantities only (``steps``, ``noise_multiplier``, ``sample_rate``): the training
        loss is computed on private rows and is not released.

    Notes
    -----
    The Poisson batches and the noise are drawn ahead, a chunk of steps at a time (at most
    ``_NOISE_CHUNK`` noise values, and about as many gathered input values, held), vectorised;
    every step still gets its own independent batch and noise draw, so the mechanism is unchanged.
    """
    _check_inputs(cfg, plan, steps)
    source = secure_source() if source is None else source
    if backend == "auto":
        backend = choose_backend(model)
    clip, n = plan.config.max_grad_norm, len(x)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    # clipped(xb, yb, sq, out): the batch's clipped gradient sum; the linear backend returns it
    # already divided by the expected batch size q n (folded into its clip factors: one pass less)
    clipped: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]], Sequence[torch.Tensor]]
    first_sq = torch.zeros(n)  # the linear backend's per-row first-layer ||a_i||^2 (+1)
    scaled = backend == "linear"
    if backend == "linear":
        if not linear_supported(model):
            raise ConfigError(
                "backend 'linear' needs nn.Linear / nn.Sequential(Linear, ReLU) with no frozen parameter; "
                "use 'opacus-hooks'"
            )
        layers, scale = model_layers(model), 1.0 / plan.batch_size
        if is_logreg(layers):  # logistic regression: the per-row norm factor, once
            first_sq = logreg_row_norms(xt, clip, scale)
            layer = layers[0]
            assert isinstance(layer, nn.Linear)

            def clipped(
                xb: torch.Tensor, yb: torch.Tensor, sq: torch.Tensor, out: list[torch.Tensor]
            ) -> Sequence[torch.Tensor]:
                return logreg_clipped_sum(layer, xb, yb, cfg, sq, clip, scale, out)

        else:
            first_sq = input_sq_norms(model, xt, layers)  # per row, once: the first layer's ||a_i||^2

            def clipped(
                xb: torch.Tensor, yb: torch.Tensor, sq: torch.Tensor, out: list[torch.Tensor]
            ) -> Sequence[torch.Tensor]:
                return linear_clipped_sum(model, xb, yb, cfg, clip, out, layers, scale=scale, first_sq=sq)

    elif backend == "ghost":
        if not ghost_supported(model):
            raise ConfigError(
                "backend 'ghost' needs an nn.Sequential of Linear, Conv2d (groups 1) and activation, "
                "pooling or flatten layers, with no frozen parameter; use 'opacus-hooks'"
            )
        clipped = lambda xb, yb, sq, out: ghost_clipped_sum(model, xb, yb, cfg, clip)  # noqa: E731
    elif backend in _OPACUS_MODES:
        clipper = OpacusClipper(model, _OPACUS_MODES[backend], clip, plan.batch_size)
        clipped = lambda xb, yb, sq, out: clipper(xb, yb, cfg)  # noqa: E731
    else:
        raise ConfigError(f"unknown backend {backend!r}; allowed: {', '.join(get_args(DpSgdBackend))}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = cfg.make_optimizer(model)
    prox = [p.detach().clone() for p in params] if cfg.proximal_mu > 0 else None
    # One flat gradient buffer: the clipped sums are written into it, noised and scaled in place.
    dtype = params[0].dtype if params else torch.float32
    same = all(p.dtype == dtype for p in params)
    sizes = [p.numel() for p in params]
    flat = torch.zeros(sum(sizes), dtype=dtype if same else torch.float64)
    views = [v.view_as(p) for v, p in zip(torch.split(flat, sizes), params, strict=True)]
    std = plan.noise_multiplier * clip / plan.batch_size  # N(0, (z C)^2) / (q n), drawn scaled
    row = max(1, math.prod(x.shape[1:]) * plan.batch_size)  # values of an expected batch's rows
    chunk = max(1, min(steps, _NOISE_CHUNK // max(1, flat.numel()), _NOISE_CHUNK // row))
    drawn = torch.empty(chunk, flat.numel(), dtype=flat.dtype)  # reused: no page faults per chunk
    regrad = backend in _OPACUS_MODES or not same  # else the grads stay the buffer's views
    for p, v in zip(params, views, strict=True):
        p.grad = v if same else v.to(p.dtype)
    model.train()
    try:
        for start in range(0, steps, chunk):
            k = min(chunk, steps - start)
            idx, counts = source.poisson_flat(n, plan.sample_rate, k)
            noise = source.noise_(drawn[:k], std).unbind()
            # the chunk's rows gathered at once, then split into the steps' batches (views)
            xs, ys, sqs = (torch.split(t[idx], counts) for t in (xt, yt, first_sq))
            for xb, yb, sq, count, z in zip(xs, ys, sqs, counts, noise, strict=True):
                if count:
                    sums = clipped(xb, yb, sq, views)
                    if not scaled:
                        for v, s in zip(views, sums, strict=True):
                            if s is not v:
                                v.copy_(s)
                        flat.div_(plan.batch_size)
                else:
                    flat.zero_()
                flat.add_(z)  # clipped sum / (q n) + N(0, (z C)^2) / (q n)
                if prox is not None:  # FedProx, after noising (post-processing)
                    for p, v, w in zip(params, views, prox, strict=True):
                        v.add_(p.detach() - w, alpha=cfg.proximal_mu)
                if correction is not None:  # the algorithm's term, after noising (post-processing)
                    correction(params, views)
                if regrad:
                    for p, v in zip(params, views, strict=True):
                        if p.grad is not v:  # Opacus' zero_grad unsets it
                            p.grad = v if same else v.to(p.dtype)
                opt.step()
    finally:
        if backend in _OPACUS_MODES:
            clipper.close()
    for p in params:  # the buffer is reused: hand back grads the caller may keep
        p.grad = None if p.grad is None else p.grad.clone()
    return {"steps": float(steps), "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate}

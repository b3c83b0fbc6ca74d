"""Customer-level (user-level) DP-SGD: the privacy unit is a customer, with all of its rows.

McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models", Sec. 2 (DP-FedSGD),
at the level of a site's customers. Every step:

1. Poisson-sample customers: each of the ``U`` customers independently with ``q = batch_size / U``
   (``batch_size`` is the *expected number of customers* per step under this unit);
2. take each sampled customer's rows, at most ``max_rows`` of them (a uniformly random subset, drawn
   from the same source, when a customer has more);
3. a customer's contribution is the **mean** of its rows' per-example gradients, clipped to L2 norm
   ``C``: whatever its number of rows, one customer moves the sum by at most ``C``;
4. sum over customers, add N(0, (z C)^2) per coordinate, divide by the expected count ``q U``, step.

Neighbouring datasets differ by one customer's rows (add or remove), so each step is the
Poisson-subsampled Gaussian mechanism with sampling probability ``q`` over customers, and the job
is the same ``dpsgd_event`` as sample-level DP-SGD with ``q`` over customers
(``plan_dpsgd(num_examples=U)``). An empty sample is still a noise-only step: exactly ``steps`` noised
releases. Per-example gradients are materialised with ``torch.func`` (``vmap(grad)``): the models are
small; the FedProx term is added after noising (post-processing), as in ``fedcore.privacy.dpsgd``.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.func import functional_call, grad, vmap

from fedcore.algorithms.base import GradCorrection
from fedcore.config.train import TrainConfig
from fedcore.errors import PrivacyError
from fedcore.privacy.dpsgd import DpSgdPlan
from fedcore.privacy.grad_sample import losses
from fedcore.privacy.rng import Source, secure_source

__all__ = ["CustomerRows", "customer_clipped_sum", "train_steps_customer_dp"]

_STABILITY = 1e-6  # the clip factor C / (norm + 1e-6), as Opacus and fedcore's linear backend


class CustomerRows:
    """The training rows of each customer (codes ``0..U-1``), to gather a step's sample quickly."""

    def __init__(self, units: NDArray[np.int64]) -> None:
        codes = torch.as_tensor(np.asarray(units, dtype=np.int64))
        if codes.ndim != 1 or len(codes) == 0 or int(codes.min()) < 0:
            raise PrivacyError("customer codes must be a non-empty 1-D array of integers >= 0")
        self.order = torch.argsort(codes, stable=True)
        self.counts = torch.bincount(codes)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.num_customers = int((self.counts > 0).sum())
        if self.num_customers != len(self.counts):
            raise PrivacyError("customer codes must be 0..U-1 with every code used (np.unique inverse)")

    def sample(
        self, customers: torch.Tensor, max_rows: int, source: Source
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(row indices, position of each row's customer in ``customers``); at most ``max_rows`` each.

        A customer with more rows keeps a uniformly random subset: its rows' random keys are ranked.
        """
        counts = self.counts[customers]
        owner = torch.repeat_interleave(torch.arange(len(customers)), counts)
        offset = torch.arange(len(owner)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        rows = self.order[self.starts[customers][owner] + offset]
        if len(counts) and int(counts.max()) > max_rows:
            keys = source.uniform(len(rows)) + 2.0 * owner.to(torch.float64)  # by customer, then random
            keep = torch.argsort(keys)[offset < max_rows]  # rows stay grouped: sorted rank = offset
            rows, owner = rows[keep], owner[keep]
        return rows, owner


def customer_clipped_sum(
    model: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    owner: torch.Tensor,
    num: int,
    cfg: TrainConfig,
    clip: float,
) -> torch.Tensor:
    """Sum over ``num`` customers of their mean per-example gradient, each clipped to ``clip`` (flat).

    ``owner[i]`` is the customer (``0..num-1``) of row ``i``; the result is in ``parameters()`` order.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return losses(out, yi.unsqueeze(0), cfg).sum()

    per = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, xb, yb)
    flat = torch.cat([per[n].reshape(len(xb), -1) for n in names], 1)
    means = torch.zeros(num, flat.shape[1], dtype=flat.dtype).index_add_(0, owner, flat)
    means /= torch.bincount(owner, minlength=num).clamp_(min=1).unsqueeze(1).to(flat.dtype)
    factor = (clip / (means.norm(dim=1) + _STABILITY)).clamp_(max=1.0)
    out: torch.Tensor = (means * factor.unsqueeze(1)).sum(0)
    return out


def train_steps_customer_dp(
    model: nn.Module,
    x: NDArray[np.float32],
    y: NDArray[np.float32],
    units: NDArray[np.int64],
    cfg: TrainConfig,
    *,
    plan: DpSgdPlan,
    max_rows: int,
    steps: int,
    source: Source | None = None,
    correction: GradCorrection | None = None,
) -> dict[str, float]:
    """Run exactly ``steps`` customer-level DP-SGD steps on ``model`` in place (one round's work).

    ``units[i]`` is row ``i``'s customer code (``0..U-1``); ``plan`` is ``plan_dpsgd`` over customers
    (its ``sample_rate`` is ``q``, its ``batch_size`` the expected customers per step ``q U``).
    ``source``: ``None`` is a fresh ``secure_source()``; ``correction``: a client algorithm's term,
    added after the noise (post-processing). Returns public quantities only.
    """
    if cfg.batch_size != plan.batch_size or not 0 <= steps <= plan.local_steps or max_rows < 1:
        raise PrivacyError(
            f"customer-level DP-SGD refused (the accounting would not hold): the plan is for batch_size "
            f"{plan.batch_size} and <= {plan.local_steps} steps with max_rows >= 1, got batch_size "
            f"{cfg.batch_size}, steps {steps}, max_rows {max_rows}; re-plan"
        )
    if len(units) != len(x):
        raise PrivacyError(f"{len(units)} customer codes for {len(x)} rows; one code per training row")
    source = secure_source() if source is None else source
    rows_of = CustomerRows(units)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = cfg.make_optimizer(model)
    prox = [p.detach().clone() for p in params] if cfg.proximal_mu > 0 else None
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    clip = plan.config.max_grad_norm
    size = sum(p.numel() for p in params)
    model.train()
    for customers in source.poisson_batches(rows_of.num_customers, plan.sample_rate, steps):
        total = torch.zeros(size, dtype=torch.float64)
        if len(customers):
            rows, owner = rows_of.sample(customers, max_rows, source)
            total += customer_clipped_sum(model, xt[rows], yt[rows], owner, len(customers), cfg, clip)
        total += source.normal(size).mul_(plan.noise_multiplier * clip)
        total /= plan.batch_size  # (clipped sum + N(0, (z C)^2)) / (q U)
        for p, g in zip(params, torch.split(total, [p.numel() for p in params]), strict=True):
            p.grad = g.view_as(p).to(p.dtype)
        if prox is not None:  # FedProx, after noising (post-processing)
            for p, w in zip(params, prox, strict=True):
                assert p.grad is not None
                p.grad.add_(p.detach() - w, alpha=cfg.proximal_mu)
        if correction is not None:  # the algorithm's term, after noising (post-processing)
            correction(params, [p.grad for p in params if p.grad is not None])
        opt.step()
    return {"steps": float(steps), "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate}

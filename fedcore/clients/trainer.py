"""Local training of a one-logit torch model on a site's arrays.

``train_steps`` runs a fixed number of optimizer steps (cycling shuffled epochs), as federated
rounds do; ``train_epochs`` runs whole epochs, as the local-only and pooled baselines do.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fedcore import metrics
from fedcore.algorithms.base import GradCorrection
from fedcore.config.train import TrainConfig

__all__ = [
    "TrainConfig",
    "evaluate",
    "evaluate_scores",
    "predict_scores",
    "train_epochs",
    "train_steps",
]


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of index batches: shuffled epochs, the last partial batch kept."""
    while True:
        perm = torch.randperm(n, generator=gen)
        yield from torch.split(perm, batch_size)


def _step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    prox: list[torch.Tensor] | None,
    mu: float,
    correction: GradCorrection | None = None,
) -> float:
    opt.zero_grad()
    loss = loss_fn(model(xb).squeeze(-1), yb)
    if prox is not None and mu > 0:
        # FedProx (Li et al. 2020, eq. 2): mu/2 ||w - w_global||^2
        loss = loss + 0.5 * mu * sum(
            ((p - g) ** 2).sum() for p, g in zip(model.parameters(), prox, strict=True)
        )
    loss.backward()
    if correction is not None:  # the job's algorithm's term (fedcore.algorithms), after the data gradient
        params = list(model.parameters())
        correction(params, [p.grad for p in params if p.grad is not None])
    opt.step()
    return float(loss.detach())


def train_steps(
    model: nn.Module,
    x: NDArray[np.float32],
    y: NDArray[np.float32],
    cfg: TrainConfig,
    *,
    steps: int,
    seed: int,
    correction: GradCorrection | None = None,
) -> dict[str, float]:
    """Run ``steps`` optimizer steps in place; returns mean training loss. ``correction`` adds the
    gradient of a client algorithm's data-independent term before every step."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt, loss_fn = cfg.make_optimizer(model), cfg.loss_fn()
    prox = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else None
    model.train()
    losses = [
        _step(model, opt, loss_fn, xt[idx], yt[idx], prox, cfg.proximal_mu, correction)
        for idx, _ in zip(_batches(len(x), cfg.batch_size, gen), range(steps), strict=False)
    ]
    return {"train_loss": float(np.mean(losses)) if losses else float("nan")}


def train_epochs(
    model: nn.Module,
    x: NDArray[np.float32],
    y: NDArray[np.float32],
    cfg: TrainConfig,
    *,
    epochs: int,
    seed: int,
) -> dict[str, float]:
    """Train for whole epochs (ceil(n / batch) steps each)."""
    steps = epochs * -(-len(x) // cfg.batch_size)
    return train_steps(model, x, y, cfg, steps=steps, seed=seed)


def predict_scores(model: nn.Module, x: NDArray[np.float32]) -> NDArray[np.float64]:
    """Probabilities of the positive class."""
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(x)).squeeze(-1)).double().numpy()


def bce(p: NDArray[np.float64], y: NDArray[np.float32]) -> NDArray[np.float64]:
    """Per-example binary cross-entropy of probabilities ``p`` for 0/1 labels ``y``."""
    eps = 1e-12
    out: NDArray[np.float64] = -(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)).astype(np.float64)
    return out


def evaluate(
    model: nn.Module,
    x: NDArray[np.float32],
    y: NDArray[np.float32],
    *,
    cost: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Accuracy at 0.5, mean BCE loss, and (when both classes occur) ROC AUC and AUPRC.

    With ``cost = {"fp": c1, "fn": c2}`` also the mean misclassification cost per example at
    the cost-optimal threshold ``c1 / (c1 + c2)`` (Elkan 2001, section 2).
    """
    return evaluate_scores(predict_scores(model, x), y, cost=cost)


def evaluate_scores(
    p: NDArray[np.float64], y: NDArray[np.float32], *, cost: Mapping[str, float] | None = None
) -> dict[str, float]:
    """``evaluate`` on probabilities ``p`` already computed."""
    loss = np.mean(bce(p, y))
    out = {
        "accuracy": float(np.mean((p >= 0.5) == (y >= 0.5))),
        "loss": float(loss),
        "n": float(len(y)),
    }
    if 0 < y.sum() < len(y):
        out["auc"] = metrics.roc_auc(y, p)
        out["auprc"] = metrics.average_precision(y, p)
    if cost:
        fp, fn = float(cost["fp"]), float(cost["fn"])
        pred = (p >= fp / (fp + fn)).astype(np.int64)
        out["cost"] = metrics.cost(y.astype(np.int64), pred, cost_fp=fp, cost_fn=fn) / len(y)
    return out

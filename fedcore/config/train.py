"""Local optimisation settings: the job's ``[train]`` (or ``[baselines]``) table, typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from fedcore.config.reader import Reader

if TYPE_CHECKING:  # torch loads when a model trains, not when a job file is read
    import torch
    from torch import nn

__all__ = ["OptimizerName", "TrainConfig"]

OptimizerName = Literal["sgd", "adam"]
_OPTIMIZERS: tuple[OptimizerName, ...] = ("sgd", "adam")


@dataclass(frozen=True)
class TrainConfig:
    """How a site optimises locally (and how the simulation-only baselines train)."""

    lr: float
    batch_size: int = 4
    optimizer: OptimizerName = "sgd"
    proximal_mu: float = 0.0
    pos_weight: float | None = None  # BCE positive-class weight (class imbalance); None = 1

    @classmethod
    def read(cls, t: Reader, *, proximal_mu: float = 0.0) -> TrainConfig:
        """Read the common keys of ``t`` (the caller reads its own extra keys and calls ``done``)."""
        return cls(
            lr=t.number("lr", gt=0),
            batch_size=t.integer("batch_size", 4, ge=1),
            optimizer=t.string("optimizer", "sgd", choices=_OPTIMIZERS),
            proximal_mu=t.number("proximal_mu", proximal_mu, ge=0),
            pos_weight=t.number("pos_weight", None, gt=0),
        )

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        import torch

        if self.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=self.lr)
        return torch.optim.SGD(model.parameters(), lr=self.lr)

    def loss_fn(self) -> nn.Module:
        import torch
        from torch import nn

        pw = None if self.pos_weight is None else torch.tensor([self.pos_weight])
        return nn.BCEWithLogitsLoss(pos_weight=pw)

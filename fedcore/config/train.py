"""Local optimisation settings: the job's ``[train]`` (or ``[baselines]``) table, typed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from fedcore.config.reader import Reader
from fedcore.tasks import Binary, Task

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
    task: Task = field(default_factory=Binary)  # the loss (the job's [task]; fedcore.tasks)

    def __post_init__(self) -> None:
        """``pos_weight`` is the binary task's: carried into it (one value for every trainer)."""
        if self.pos_weight is None:
            return
        if not isinstance(self.task, Binary):
            raise ValueError(
                f"pos_weight weighs a binary task's positive class; the task is {self.task.name!r}"
            )
        if self.task.pos_weight != self.pos_weight:
            object.__setattr__(self, "task", Binary(pos_weight=self.pos_weight))

    @classmethod
    def read(cls, t: Reader, *, proximal_mu: float = 0.0, task: Task | None = None) -> TrainConfig:
        """Read the common keys of ``t`` (the caller reads its own extra keys and calls ``done``)."""
        task = Binary() if task is None else task
        pos_weight = t.number("pos_weight", None, gt=0, doc="binary task: the positive class's BCE weight")
        if pos_weight is not None and not isinstance(task, Binary):
            t.problem("pos_weight", f"weighs a binary task's positive class; the job's task is {task.name!r}")
            pos_weight = None
        return cls(
            lr=t.number("lr", gt=0),
            batch_size=t.integer("batch_size", 4, ge=1),
            optimizer=t.string("optimizer", "sgd", choices=_OPTIMIZERS),
            proximal_mu=t.number("proximal_mu", proximal_mu, ge=0),
            pos_weight=pos_weight,
            task=task,
        )

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        import torch

        if self.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=self.lr)
        return torch.optim.SGD(model.parameters(), lr=self.lr)

    def loss_fn(self) -> nn.Module:
        """The task's batch loss as a module, called as ``loss_fn(model(x).squeeze(-1), y)``."""
        from fedcore.tasks.loss import TaskLoss

        return TaskLoss(self.task)

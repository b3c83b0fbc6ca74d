"""A task's loss as a torch module (imported when a model trains: reading a job never loads torch)."""

from __future__ import annotations

import torch
from torch import nn

from fedcore.tasks.base import Task

__all__ = ["TaskLoss"]


class TaskLoss(nn.Module):
    """A task's mean batch loss; outputs squeezed to one dimension (one output) are restored."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task

    def forward(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.task.loss(outputs.unsqueeze(-1) if outputs.dim() == 1 else outputs, y)

"""The task protocol: what a model predicts, the loss it learns by, and how it is scored.

A task is a small frozen dataclass (its options come from the job's ``[task]`` table) with a class
``name`` (the name a job and a site file use) and these methods:

- ``read_labels(frame, site)`` (classmethod, site side, before any job): the site's label
  column(s) as a float32 array, shape ``(n,)`` or ``(n, k)``; ``stratify(y)``: what a random split
  keeps balanced (or ``None``);
- ``output_dim()``: the model's outputs (the job's model is built with this many);
- ``loss(outputs, y)``: the mean loss of a batch (torch, differentiable); ``example_losses(outputs,
  y)``: one loss per example, whose sum is the batch loss times its size. DP-SGD clips these
  (``per_example`` true: a class constant, or a property of the options); a task whose loss is not
  a sum over examples (``per_example`` false, e.g. survival's Cox partial likelihood) is refused
  under DP-SGD;
- ``predict(outputs)``: the scores a site evaluates (numpy); ``metrics(scores, y)``: the scores'
  metrics (``loss`` and ``n`` included); ``row_losses(scores, y)``: per-row losses (the
  membership attack's input; ``None`` where none exists); ``reference(y_train, y_test)``: what a
  trivial predictor scores (the majority class, the training mean);
- ``dp_rows(scores, y)``: per-row ``(correct, clipped loss / clip)`` in [0, 1] for a DP evaluation
  (``dp_evaluation = True``), or ``None`` when the task has none (``dp_evaluation = False``: a site
  must then withhold its evaluations under DP).

``headline`` names the metric progress lines, plots and sweep tables lead with (binary: accuracy).

A site declares what its labels are (``[schema] target``, a registered task name); a job's task
must be that one (checked at admission: ``refusal``). Register a task with ``register_task``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from fedcore.plugins import Registry

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from fedcore.config.site import SiteConfig

__all__ = [
    "F32",
    "F64",
    "NOT_PER_EXAMPLE",
    "LabelSpec",
    "Task",
    "make_task",
    "register_task",
    "target_refusal",
    "task_class",
    "task_names",
    "task_refusals",
]

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]


@dataclass(frozen=True)
class LabelSpec:
    """What a site file says its labels are: the task they serve (``[schema] target``), the label
    column, the event column (survival) and the number of classes (declared levels; multi-class)."""

    target: str
    label: str
    event: str | None = None
    classes: int | None = None


@runtime_checkable
class Task(Protocol):
    """See the module docstring."""

    name: ClassVar[str]
    dp_evaluation: ClassVar[bool]
    headline: ClassVar[str]

    @property
    def per_example(self) -> bool: ...  # a class constant, or an option's (survival's likelihood)

    @classmethod
    def read_labels(cls, frame: pd.DataFrame, site: SiteConfig) -> F32: ...

    @classmethod
    def stratify(cls, y: F32) -> NDArray[np.int64] | None: ...

    def output_dim(self) -> int: ...

    def refusal(self, labels: LabelSpec) -> str | None: ...

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def example_losses(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def predict(self, outputs: torch.Tensor) -> F64: ...

    def metrics(self, scores: F64, y: F32) -> dict[str, float]: ...

    def row_losses(self, scores: F64, y: F32) -> F64 | None: ...

    def reference(self, y_train: F32, y_test: F32) -> dict[str, float]: ...

    def dp_rows(self, scores: F64, y: F32) -> tuple[F64, F64] | None: ...


_TASKS: Registry[type[Task]] = Registry("task")


def register_task(name: str, cls: type[Task], *, force: bool = False) -> None:
    """Register ``cls(**options)`` (a ``Task``; ``options`` from the job's ``[task]``) as ``name``."""
    _TASKS.register(name, cls, force=force)


def task_names() -> list[str]:
    return _TASKS.names()


def task_class(name: str) -> type[Task]:
    """The class registered as ``name`` (``UnknownNameError`` naming the known ones if none)."""
    return _TASKS.get(name)


def make_task(name: str, options: Mapping[str, Any] | None = None) -> Task:
    """An instance of the task ``name`` with ``options`` (``TypeError``/``ValueError`` if rejected)."""
    return task_class(name)(**dict(options or {}))


def target_refusal(task: Task, labels: LabelSpec) -> str | None:
    """The usual check: a site's labels serve the task of the same name."""
    if labels.target != task.name:
        return (
            f"the job's task is {task.name!r} but this site's labels ({labels.label!r}) are declared for "
            f"{labels.target!r} ([schema] target in its site file)"
        )
    return None


NOT_PER_EXAMPLE = (
    "DP-SGD clips each example's gradient, and the {task!r} task's loss is not a sum over examples, "
    "so clipping would not bound one record's influence (fedcore/tasks/README.md); train it without "
    "[privacy.dpsgd], or with a per-example loss where the task has one (survival: "
    '[task] likelihood = "weibull")'
)


def task_refusals(task: Task, labels: LabelSpec | None, *, dp: bool, evaluation: str) -> list[str]:
    """Why a site refuses a job's ``task``: its labels serve another task, or under DP its policy
    releases noisy evaluations (``evaluation = "dp"``) and the task has no bounded per-row statistic."""
    out = []
    why = task.refusal(labels) if labels is not None else None
    if why:
        out.append(why)
    if dp and evaluation == "dp" and not task.dp_evaluation:
        out.append(
            f'its DP evaluations (evaluation = "dp") release a noisy accuracy and clipped loss, which the '
            f'{task.name!r} task has not; under DP it needs evaluation = "withhold" or "clear"'
        )
    return out

"""A job's ``[task]`` (what the model learns, ``fedcore.tasks``), read once into a ``Task``, and the
model spec given the task's number of outputs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedcore.config.reader import Reader
from fedcore.errors import FedcoreError
from fedcore.tasks import BINARY, Task, make_task, task_class, task_names
from fedcore.tasks.base import NOT_PER_EXAMPLE

if TYPE_CHECKING:
    from fedcore.config.job import NamedSpec

__all__ = ["check_task", "read_task", "with_outputs"]


def read_task(t: Reader, options_problems: Callable[..., str]) -> Task:
    """The task of ``[task]`` (binary without one); problems go to ``t``'s list (then binary).
    ``options_problems(kind, name, factory, options)`` names an unknown option, with a suggestion."""
    name = t.string(
        "name", "binary", choices=tuple(task_names()), doc="binary, multiclass, regression, survival"
    )
    options = {k: v for k, v in t.table.items() if k != "name"}
    t.done(extra_known=options)
    if name not in task_names():
        return BINARY
    bad = options_problems("task", name, task_class(name), options)
    if bad:
        t.problems.append(f"{t.where}: {bad}")
        return BINARY
    try:
        return make_task(name, options)
    except (FedcoreError, TypeError, ValueError) as err:
        t.problems.append(f"{t.where}: task {name!r} rejects its options {options}: {err}")
        return BINARY


def check_task(task: Task, top: Reader, *, dpsgd: bool, binary_scores: bool) -> None:
    """The job's other sections against its task: DP-SGD needs a per-example loss, and ``[evaluate]``
    cost or card_precision (``binary_scores``) score a binary task only."""
    if dpsgd and not task.per_example:
        top.problem("privacy.dpsgd", NOT_PER_EXAMPLE.format(task=task.name))
    if task.name != "binary" and binary_scores:
        top.problem(
            "evaluate", f"cost and card_precision score a binary task; the job's task is {task.name!r}"
        )


def with_outputs(model: NamedSpec, task: Task, top: Reader) -> NamedSpec:
    """``model`` with the task's number of outputs (``output_dim``, passed only when not 1)."""
    from fedcore.models import model_builder, model_names

    outputs = task.output_dim()
    if outputs == 1 or model.name not in model_names():
        return model
    if "output_dim" not in inspect.signature(model_builder(model.name)).parameters:
        top.problem("model", f"{model.name!r} builds one output; the {task.name!r} task needs {outputs}")
    options: dict[str, Any] = {**model.options, "output_dim": outputs}
    return type(model)(model.name, options)

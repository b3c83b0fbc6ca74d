"""Tasks: the loss, label handling and metrics of what a model learns, as plug-ins (see ``base``).

Built in: ``binary`` (the default), ``multiclass``, ``regression``, ``survival``. A job chooses one
in ``[task]`` (``name`` and the task's options); a site file declares which one its labels serve
(``[schema] target``). Add one with ``register_task(name, cls)`` from an app's plug-in module.
"""

from fedcore.tasks.base import LabelSpec, Task, make_task, register_task, task_class, task_names
from fedcore.tasks.classification import Binary, MultiClass
from fedcore.tasks.regression import Regression
from fedcore.tasks.survival import Survival, cox_loss, weibull_losses

register_task("binary", Binary)
register_task("multiclass", MultiClass)
register_task("regression", Regression)
register_task("survival", Survival)

BINARY = Binary()
"""The default task (a job without ``[task]``)."""

__all__ = [
    "BINARY",
    "Binary",
    "LabelSpec",
    "MultiClass",
    "Regression",
    "Survival",
    "Task",
    "cox_loss",
    "make_task",
    "register_task",
    "task_class",
    "task_names",
    "weibull_losses",
]

"""fedcore: privacy-preserving federated learning and analytics on Flower."""

import importlib
import importlib.abc
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below are imported on first use (PEP 562): `import fedcore` stays light
    from fedcore.aggregators import (
        AggregateResult,
        Aggregator,
        ClientUpdate,
        FedAdagrad,
        FedAdam,
        FedAvg,
        FedYogi,
        aggregator_names,
        make_aggregator,
        register_aggregator,
    )
    from fedcore.config import JobSpec, Reader, SiteConfig, load_job, load_site
    from fedcore.errors import FedcoreError
    from fedcore.privacy.mechanisms import (
        Mechanism,
        MechanismPlan,
        PlanContext,
        get_mechanism,
        mechanism_names,
        register_mechanism,
    )
    from fedcore.tasks import Task, register_task, task_names

__all__ = [
    "AggregateResult",
    "Aggregator",
    "ClientUpdate",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedYogi",
    "FedcoreError",
    "JobSpec",
    "Mechanism",
    "MechanismPlan",
    "PlanContext",
    "Reader",
    "SiteConfig",
    "Task",
    "aggregator_names",
    "get_mechanism",
    "load_job",
    "load_site",
    "make_aggregator",
    "mechanism_names",
    "register_aggregator",
    "register_mechanism",
    "register_task",
    "task_names",
]

__version__ = "0.2.0"

# Where each public name lives. Importing a subpackage (``fedcore.flower.gate``, ``fedcore.cli``) runs
# this file first: importing torch, dp_accounting and Flower here would cost seconds in every process,
# e.g. a node's ClientApp process that must reach its SuperNode within 30 s (docs/deployment.md), and
# ``fedcore run`` refusing a bad file (it validates before those load).
_HOMES = {
    **dict.fromkeys(
        ("AggregateResult", "Aggregator", "ClientUpdate", "FedAdagrad", "FedAdam", "FedAvg", "FedYogi",
         "aggregator_names", "make_aggregator", "register_aggregator"),
        "fedcore.aggregators",
    ),
    **dict.fromkeys(("JobSpec", "Reader", "SiteConfig", "load_job", "load_site"), "fedcore.config"),
    "FedcoreError": "fedcore.errors",
    **dict.fromkeys(
        ("Mechanism", "MechanismPlan", "PlanContext", "get_mechanism", "mechanism_names",
         "register_mechanism"),
        "fedcore.privacy.mechanisms",
    ),
    **dict.fromkeys(("Task", "register_task", "task_names"), "fedcore.tasks"),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'fedcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# Modules that moved in 0.2 (the layout of issue 26): importing an old path fails with one line
# that names the new one, instead of a bare ModuleNotFoundError.
_MOVED = {
    "fedcore.cli_admin": "fedcore.cli.admin",
    "fedcore.cli_query": "fedcore.cli.query",
    "fedcore.cli_deploy": "fedcore.cli.deploy",
    "fedcore.cli_init": "fedcore.cli.init",
    "fedcore.he_estimate": "fedcore.cli.estimate",
    "fedcore.certs": "fedcore.cli.certs",
    "fedcore.runner": "fedcore.harness.runner",
    "fedcore.loop": "fedcore.harness.loop",
    "fedcore.baselines": "fedcore.harness.baselines",
    "fedcore.summary": "fedcore.harness.summary",
    "fedcore.analytics.run": "fedcore.harness.statistics",
    "fedcore.report": "fedcore.reporting.report",
    "fedcore.evaluation": "fedcore.clients.evaluation",
    "fedcore.privacy.policy": "fedcore.site.policy",
    "fedcore.privacy.plans": "fedcore.site.plans",
    "fedcore.privacy.plan": "fedcore.site.plan",
    "fedcore.privacy.ledger": "fedcore.site.ledger",
    "fedcore.privacy.audit": "fedcore.site.audit",
    "fedcore.privacy._sqlite": "fedcore.site.db",
    "fedcore.clients.guard": "fedcore.site.guard",
    "fedcore.clients.replies": "fedcore.site.replies",
    "fedcore.clients.site": "fedcore.clients.runtime",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Consulted last (after every real finder failed): an old path raises naming its new place."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname in _MOVED:
            raise ModuleNotFoundError(
                f"{fullname} moved to {_MOVED[fullname]} in fedcore 0.2; change the import to "
                f"`import {_MOVED[fullname]}`",
                name=fullname,
            )
        return None


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())

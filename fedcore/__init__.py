"""fedcore: privacy-preserving federated learning and analytics on Flower."""

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
    "aggregator_names",
    "get_mechanism",
    "load_job",
    "load_site",
    "make_aggregator",
    "mechanism_names",
    "register_aggregator",
    "register_mechanism",
]

__version__ = "0.1.0"

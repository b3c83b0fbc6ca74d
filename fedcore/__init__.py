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
from fedcore.config import JobSpec, SiteConfig, load_job, load_site
from fedcore.errors import FedcoreError

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
    "SiteConfig",
    "aggregator_names",
    "load_job",
    "load_site",
    "make_aggregator",
    "register_aggregator",
]

__version__ = "0.1.0"

"""Aggregators: the one small protocol researchers implement, and the built-in ones."""

from fedcore.aggregators.base import (
    AggregateResult,
    Aggregator,
    Arrays,
    ClientUpdate,
    MeanAggregator,
    StatefulAggregator,
    aggregator_factory,
    aggregator_names,
    aggregator_state,
    load_aggregator_state,
    make_aggregator,
    register_aggregator,
)
from fedcore.aggregators.fedavg import FedAvg
from fedcore.aggregators.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from fedcore.aggregators.median import CoordinateMedian

register_aggregator("fedavg", FedAvg)
register_aggregator("fedprox", FedAvg)
register_aggregator("fedadam", FedAdam)
register_aggregator("fedyogi", FedYogi)
register_aggregator("fedadagrad", FedAdagrad)
register_aggregator("median", CoordinateMedian)

__all__ = [
    "AggregateResult",
    "Aggregator",
    "Arrays",
    "ClientUpdate",
    "CoordinateMedian",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedOpt",
    "FedYogi",
    "MeanAggregator",
    "StatefulAggregator",
    "aggregator_factory",
    "aggregator_names",
    "aggregator_state",
    "load_aggregator_state",
    "make_aggregator",
    "register_aggregator",
]

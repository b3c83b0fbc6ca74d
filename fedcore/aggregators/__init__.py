"""Aggregators: the one small protocol researchers implement, and the built-in ones.

Byzantine-robust rules (``RobustAggregator``: they refuse a round with fewer than ``min_updates()``
updates): ``krum``, ``multikrum``, ``bulyan``, ``trmean`` (trimmed mean), ``geometric_median``,
``centered_clipping`` and the older ``median``. Wrappers that take another aggregator, so not
selectable by name alone: ``AdaptiveClipping`` (non-private adaptive norm clipping) and
``NearestNeighborMixing`` (NNM pre-aggregation).
"""

from fedcore.aggregators.adaptive_clipping import AdaptiveClipping
from fedcore.aggregators.base import (
    AggregateResult,
    Aggregator,
    Arrays,
    ClientUpdate,
    MeanAggregator,
    RobustAggregator,
    StatefulAggregator,
    aggregator_factory,
    aggregator_names,
    aggregator_state,
    load_aggregator_state,
    make_aggregator,
    register_aggregator,
)
from fedcore.aggregators.bulyan import Bulyan
from fedcore.aggregators.centered_clipping import CenteredClipping
from fedcore.aggregators.fedavg import FedAvg
from fedcore.aggregators.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from fedcore.aggregators.geometric_median import GeometricMedian
from fedcore.aggregators.krum import Krum, MultiKrum
from fedcore.aggregators.median import CoordinateMedian
from fedcore.aggregators.nnm import NearestNeighborMixing
from fedcore.aggregators.trimmed_mean import TrimmedMean

register_aggregator("fedavg", FedAvg)
register_aggregator("fedprox", FedAvg)
register_aggregator("fedadam", FedAdam)
register_aggregator("fedyogi", FedYogi)
register_aggregator("fedadagrad", FedAdagrad)
register_aggregator("median", CoordinateMedian)
register_aggregator("krum", Krum)
register_aggregator("multikrum", MultiKrum)
register_aggregator("bulyan", Bulyan)
register_aggregator("trmean", TrimmedMean)  # "trimmed_mean" is the medical example's own plug-in
register_aggregator("geometric_median", GeometricMedian)
register_aggregator("centered_clipping", CenteredClipping)

__all__ = [
    "AdaptiveClipping",
    "AggregateResult",
    "Aggregator",
    "Arrays",
    "Bulyan",
    "CenteredClipping",
    "ClientUpdate",
    "CoordinateMedian",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedOpt",
    "FedYogi",
    "GeometricMedian",
    "Krum",
    "MeanAggregator",
    "MultiKrum",
    "NearestNeighborMixing",
    "RobustAggregator",
    "StatefulAggregator",
    "TrimmedMean",
    "aggregator_factory",
    "aggregator_names",
    "aggregator_state",
    "load_aggregator_state",
    "make_aggregator",
    "register_aggregator",
]

"""Job and site files (TOML), parsed strictly into typed, frozen objects with every problem at once."""

from fedcore.config.job import (
    BaselineSpec,
    CardPrecision,
    EvaluateSpec,
    HeSpec,
    JobRequest,
    JobSpec,
    NamedSpec,
    apply_overrides,
    load_job,
    parse_job,
)
from fedcore.config.reader import Reader, read_toml
from fedcore.config.site import ColumnSpec, SiteConfig, load_site
from fedcore.config.train import TrainConfig

__all__ = [
    "BaselineSpec",
    "CardPrecision",
    "ColumnSpec",
    "EvaluateSpec",
    "HeSpec",
    "JobRequest",
    "JobSpec",
    "NamedSpec",
    "Reader",
    "SiteConfig",
    "TrainConfig",
    "apply_overrides",
    "load_job",
    "load_site",
    "parse_job",
    "read_toml",
]

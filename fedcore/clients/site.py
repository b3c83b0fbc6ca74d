"""The site runtime: what a site node does for each request, independent of the transport.

The Flower ClientApp (``fedcore/flower/client_app.py``) only translates messages to these calls.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from fedcore.aggregators.base import Arrays
from fedcore.clients.trainer import TrainConfig, evaluate, train_steps
from fedcore.config import SiteConfig, load_site
from fedcore.data import SiteData, prepare_site
from fedcore.errors import UpdateError
from fedcore.models import build_model, get_arrays, set_arrays

__all__ = ["SiteRuntime", "TrainResult", "round_seed", "schema_fingerprint"]


def schema_fingerprint(site: SiteConfig) -> str:
    """Short hash of what must agree across sites (label, feature columns, types, levels)."""
    blob = json.dumps(site.schema_signature(), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def round_seed(job_seed: int, server_round: int, site: str) -> int:
    """A per-site, per-round training seed that every run with the same job seed reproduces."""
    digest = hashlib.sha256(f"{job_seed}/{server_round}/{site}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class TrainResult:
    delta: Arrays
    num_examples: int
    metrics: dict[str, float]


class SiteRuntime:
    """One site's data and model operations. Build with ``SiteRuntime.load(site_file)``."""

    _cache: ClassVar[dict[Path, SiteRuntime]] = {}

    def __init__(self, site: SiteConfig) -> None:
        self.site = site
        self.data: SiteData = prepare_site(site)

    @classmethod
    def load(cls, site_file: Path | str) -> SiteRuntime:
        """Load (once per process) the runtime for ``site_file``."""
        key = Path(site_file).resolve()
        if key not in cls._cache:
            torch.set_num_threads(1)  # tiny models: threads cost more than they give
            cls._cache[key] = cls(load_site(key))
        return cls._cache[key]

    def describe(self) -> dict[str, Any]:
        return {
            "site": self.site.name,
            "schema": schema_fingerprint(self.site),
            "features": ",".join(self.data.features),
            "num_train": len(self.data.y_train),
            "num_test": len(self.data.y_test),
        }

    def _model(self, model_spec: Mapping[str, Any], arrays: Arrays) -> torch.nn.Module:
        model = build_model(model_spec, len(self.data.features), seed=0)
        expected = [a.shape for a in get_arrays(model)]
        got = [np.shape(a) for a in arrays]
        if expected != got:
            raise UpdateError(
                f"site {self.site.name!r}: the global model has tensor shapes {got} but this "
                f"site's schema gives {expected}; the sites' schemas differ"
            )
        set_arrays(model, arrays)
        return model

    def train(
        self,
        global_arrays: Arrays,
        *,
        model_spec: Mapping[str, Any],
        cfg: TrainConfig,
        steps: int,
        seed: int,
    ) -> TrainResult:
        """Train locally from ``global_arrays``; the update is ``local - global``."""
        model = self._model(model_spec, global_arrays)
        metrics = train_steps(model, self.data.x_train, self.data.y_train, cfg, steps=steps, seed=seed)
        delta = tuple(a - g for a, g in zip(get_arrays(model), global_arrays, strict=True))
        return TrainResult(delta, len(self.data.y_train), metrics)

    def evaluate(
        self, arrays: Arrays, *, model_spec: Mapping[str, Any], cost: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        model = self._model(model_spec, arrays)
        return evaluate(model, self.data.x_test, self.data.y_test, cost=cost)

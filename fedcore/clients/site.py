"""The site runtime: what a site node does for each request, independent of the transport.

The Flower ClientApp (``fedcore/flower/client_app.py``) only translates messages to these calls.
Before any work for a job the site reconciles the job's privacy request with its own policy and
charges the whole planned cost to its ledger (refusing, with a reason, if it does not fit).
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
from fedcore.clients.job import JobPrivacy, SitePlan, plan_site_privacy
from fedcore.clients.policy import SitePolicy
from fedcore.clients.privacy import SitePrivacy
from fedcore.clients.trainer import TrainConfig, train_steps
from fedcore.config import SiteConfig, load_site
from fedcore.data import SiteData, prepare_site
from fedcore.errors import UpdateError
from fedcore.evaluation import evaluate_site
from fedcore.models import build_model, get_arrays, set_arrays
from fedcore.privacy.client_dp import clip_and_add_noise_share
from fedcore.privacy.dpsgd import train_steps_dp
from fedcore.privacy.mechanisms import make_rng

__all__ = ["SiteRuntime", "TrainResult", "round_seed", "schema_fingerprint"]

_PUBLIC_TRAIN_METRICS = frozenset({"steps", "noise_multiplier", "sample_rate"})


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
    """One site's data, policy and model operations. Build with ``SiteRuntime.load(site_file)``."""

    _cache: ClassVar[dict[tuple[Path, Path | None], SiteRuntime]] = {}

    def __init__(self, site: SiteConfig, state_dir: Path | None = None) -> None:
        self.site = site
        self.policy = SitePolicy.from_site(site)
        self.privacy = SitePrivacy(site, self.policy, state_dir)
        self.data: SiteData = prepare_site(site)
        self._plans: dict[str, SitePlan] = {}

    @classmethod
    def load(cls, site_file: Path | str, state_dir: Path | None = None) -> SiteRuntime:
        """Load (once per process) the runtime for ``site_file``; ledgers live in ``state_dir``."""
        key = (Path(site_file).resolve(), state_dir)
        if key not in cls._cache:
            torch.set_num_threads(1)  # tiny models: threads cost more than they give
            cls._cache[key] = cls(load_site(key[0]), state_dir)
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

    def admit(self, job: JobPrivacy, *, actor: str = "coordinator") -> tuple[SitePlan, dict[str, float]]:
        """Check policy, plan and charge the whole job once; refuse before any work if it does not fit."""
        self.policy.check_he(job.he, self.site.name)
        if job.job_id not in self._plans:
            self._plans[job.job_id] = plan_site_privacy(job, self.policy, num_examples=len(self.data.y_train))
        plan = self._plans[job.job_id]
        released = (
            f"{job.rounds} model updates ({'DP-SGD' if plan.dpsgd else 'no DP-SGD'}, "
            f"{plan.client_dp.mode + ' client DP' if plan.client_dp else 'no client DP'}, "
            f"{'HE' if job.he else 'plaintext'})"
        )
        adm = self.privacy.admit(job.job_id, plan.events, actor=actor, released=released)
        report = {"epsilon": adm.epsilon, "delta": adm.delta}
        if adm.budget_epsilon is not None and adm.remaining_epsilon is not None:
            report |= {"budget_epsilon": adm.budget_epsilon, "remaining_epsilon": adm.remaining_epsilon}
        return plan, report

    def train(
        self,
        global_arrays: Arrays,
        *,
        model_spec: Mapping[str, Any],
        cfg: TrainConfig,
        steps: int,
        seed: int,
        job: JobPrivacy | None = None,
    ) -> TrainResult:
        """Train locally from ``global_arrays``; the update is ``local - global`` (protected per plan)."""
        plan, report = self.admit(job) if job is not None else (None, {})
        model = self._model(model_spec, global_arrays)
        x, y = self.data.x_train, self.data.y_train
        if plan is not None and plan.dpsgd_plan is not None:
            secure = plan.dpsgd_plan.config.secure
            metrics = train_steps_dp(
                model, x, y, cfg, plan=plan.dpsgd_plan, steps=steps, seed=None if secure else seed
            )
        else:
            metrics = train_steps(model, x, y, cfg, steps=steps, seed=seed)
        delta: Arrays = tuple(a - g for a, g in zip(get_arrays(model), global_arrays, strict=True))
        if plan is not None and plan.client_dp is not None and plan.client_dp.mode == "distributed":
            assert job is not None
            rng = make_rng(None if job.secure_noise else seed, secure=job.secure_noise)
            delta = clip_and_add_noise_share(
                delta,
                clipping_norm=plan.client_dp.clipping_norm,
                noise_multiplier=plan.client_dp.noise_multiplier,
                num_sites=job.num_sites,
                rng=rng,
            )
        if plan is not None and plan.events:
            # a loss over private rows is itself a release: under DP send only public numbers
            metrics = {k: v for k, v in metrics.items() if k in _PUBLIC_TRAIN_METRICS}
        return TrainResult(delta, len(y), {**metrics, **report})

    def evaluate(
        self, arrays: Arrays, *, model_spec: Mapping[str, Any], options: Mapping[str, Any] | None = None
    ) -> dict[str, float]:
        """Scores of the model on this site's test rows (``options``: the job's ``[evaluate]``)."""
        return evaluate_site(self._model(model_spec, arrays), self.data, options)

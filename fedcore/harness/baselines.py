"""Simulation-only reference points: local-only and pooled training.

Only a simulation can compute these (it holds every site's rows in one process); a real
federation cannot, which is why the report labels them as baselines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from fedcore.aggregators.base import MeanAggregator
from fedcore.aggregators.wrappers import build_aggregator
from fedcore.clients.evaluation import evaluate_site
from fedcore.clients.trainer import predict_scores, train_epochs, train_steps
from fedcore.config.job import EvaluateSpec, JobSpec, parse_job
from fedcore.config.train import TrainConfig
from fedcore.data import SiteData
from fedcore.models import build_model, set_arrays
from fedcore.privacy.mia import attack_auc
from fedcore.reporting.released import mean_metrics
from fedcore.tasks import BINARY, Task

__all__ = ["local_and_pooled", "local_only_private", "membership_attack"]


def _scores(
    model: torch.nn.Module, sites: Sequence[SiteData], options: EvaluateSpec | None, task: Task
) -> dict[str, dict[str, float]]:
    return {s.site: evaluate_site(model, s, options, task) for s in sites}


def local_and_pooled(
    sites: Sequence[SiteData],
    *,
    model_spec: Mapping[str, Any],
    cfg: TrainConfig,
    epochs: int,
    seed: int,
    evaluate: EvaluateSpec | None = None,
    pooled_rows: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None,
    steps: int | None = None,
) -> dict[str, Any]:
    """Train one model per site and one on the pooled training rows; score each on every site.

    ``steps`` (instead of ``epochs``): each site's model takes that many optimizer steps, the pooled
    model that many per site (the compute the sites spend in a job of ``rounds x local_steps``).

    ``local_only_accuracy`` of a site is its model's accuracy averaged over all sites' test sets
    (the Fed-Heart-Disease convention); ``local_only_own_accuracy`` is on its own test set.
    Pooled rows keep each site's own standardisation, as the federated sites do, unless
    ``pooled_rows`` (inputs, labels) gives the pooled model's training rows otherwise (FLamby's
    protocol standardises them with the pooled training rows' statistics). The loss and metrics are
    ``cfg.task``'s.
    """
    torch.set_num_threads(1)
    dim = len(sites[0].features)
    out: dict[str, Any] = {"sites": {}}
    for s in sites:
        model = build_model(model_spec, dim, seed=seed)
        _train(model, s.x_train, s.y_train, cfg, epochs=epochs, steps=steps, seed=seed)
        per = _scores(model, sites, evaluate, cfg.task)
        out["sites"][s.site] = {
            **{f"local_only_{k}": v for k, v in mean_metrics(per).items()},
            **{f"local_only_own_{k}": v for k, v in per[s.site].items() if k != "n"},
        }
    x, y = pooled_rows or (np.vstack([s.x_train for s in sites]), np.concatenate([s.y_train for s in sites]))
    model = build_model(model_spec, dim, seed=seed)
    _train(model, x, y, cfg, epochs=epochs, steps=None if steps is None else steps * len(sites), seed=seed)
    per = _scores(model, sites, evaluate, cfg.task)
    out.update({f"pooled_{k}": v for k, v in mean_metrics(per).items()})
    out["pooled_per_site"] = per
    return out


def _train(
    model: torch.nn.Module,
    x: NDArray[np.float32],
    y: NDArray[np.float32],
    cfg: TrainConfig,
    *,
    epochs: int,
    steps: int | None,
    seed: int,
) -> None:
    if steps is None:
        train_epochs(model, x, y, cfg, epochs=epochs, seed=seed)
    else:
        train_steps(model, x, y, cfg, steps=steps, seed=seed)


def local_only_private(spec: JobSpec, site_files: Sequence[Path]) -> dict[str, dict[str, float]]:
    """Each site alone under the job's DP-SGD, scored on its own test set ({} without DP-SGD).

    A federation of one site (``fedcore.harness.loop.run_inprocess``) with the same rounds, local steps and
    epsilon answers "what would this site get alone with the same privacy?". Its ledgers live in a
    temporary folder and the sites' own floor on federation size is lifted: a simulation-only
    reference, not charged to anyone's budget and never released.
    """
    from fedcore.harness.loop import run_inprocess

    if "dpsgd" not in spec.mechanisms:
        return {}
    table = {
        **{k: v for k, v in spec.table.items() if k != "attack"},  # one honest site alone
        "privacy": {"dpsgd": spec.table["privacy"]["dpsgd"]},
        "job": {**spec.table["job"], "min_sites": 1, "name": f"{spec.name}-local-only"},
    }
    if not isinstance(build_aggregator(spec.aggregator.name, spec.aggregator.options), MeanAggregator):
        table["aggregator"] = {"name": "fedavg"}  # a robust rule has nothing to be robust against alone
    alone = parse_job(table, f"{spec.name} (each site alone)")
    out = {}
    for path in site_files:
        arrays, (site,) = run_inprocess(
            alone, [path], seed=spec.seed, min_sites_floor=1, drop=spec.baselines.drop
        )
        model = build_model(spec.model.as_table(), len(site.data.features), seed=0)
        set_arrays(model, arrays)
        scores = evaluate_site(model, site.data, spec.evaluate, spec.task)
        out[site.name] = {k: v for k, v in scores.items() if k != "n"}
    return out


def _example_losses(
    model: torch.nn.Module, x: NDArray[np.float32], y: NDArray[np.float32], task: Task
) -> NDArray[np.float64] | None:
    return task.row_losses(predict_scores(model, x, task), y)


def membership_attack(
    arrays: Sequence[np.ndarray],
    sites: Sequence[SiteData],
    *,
    model_spec: Mapping[str, Any],
    task: Task = BINARY,
) -> dict[str, float]:
    """Loss-threshold membership-inference AUC (Yeom et al. 2018) of the final model, per site:
    the site's training rows are members, its test rows non-members; 0.5 means no leak detected.
    Empty for a task without per-row losses (survival)."""
    model = build_model(model_spec, len(sites[0].features), seed=0)
    set_arrays(model, tuple(np.asarray(a, dtype=np.float64) for a in arrays))
    out = {}
    for s in sites:
        members = _example_losses(model, s.x_train, s.y_train, task)
        others = _example_losses(model, s.x_test, s.y_test, task)
        if members is not None and others is not None:
            out[s.site] = attack_auc(members, others)
    return out

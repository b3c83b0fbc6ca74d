"""The run summary of a simulation: the federated model's scores, the references, every release.

Two sources, kept apart and labelled:

- what the **sites released** to the coordinator (``metrics.json``): their plans (every release
  with its charge, and what is released uncharged), the per-round evaluations their policies let
  through, their audit heads;
- what only a **simulation** can compute, because it holds every site's rows in one process: the
  final model's scores on each site's test set, the local-only and pooled baselines, the
  membership-inference attack. A real federation has none of these.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcore.clients.evaluation import evaluate_site
from fedcore.config.job import JobSpec
from fedcore.data import SiteData
from fedcore.harness.baselines import local_and_pooled, local_only_private, membership_attack
from fedcore.models import build_model, set_arrays
from fedcore.reporting.released import mean_metrics, run_section, sites_missing

__all__ = ["average_runs", "build_summary"]

_HARNESS = (
    "the federated model's per-site scores (sites.<site>.<metric>, mean_site_<metric>) are computed by "
    "the simulation harness on the final model and every site's test rows: simulation only"
)
_MAJORITY = (
    "majority class (sites.<site>.majority_class_accuracy): always predicting the class most frequent "
    "in the site's training labels (positive on a tie), scored on its test set: simulation only"
)
_LOCAL_ONLY = (
    "alone: each site's model on its own test set (local_only_own_<metric>, mean_local_only_own_<metric>); "
    "the published convention scores it on every site's test set (local_only_<metric>, "
    "mean_local_only_<metric>)"
)


def build_summary(
    spec: JobSpec,
    out: Path,
    wall: float,
    datas: Sequence[SiteData],
    site_files: Sequence[Path],
    *,
    baselines: bool,
) -> dict[str, Any]:
    """The summary of the run in ``out`` (``metrics.json`` and ``model.npz`` written by the run)."""
    metrics = json.loads((out / "metrics.json").read_text())
    model = np.load(out / "model.npz")
    arrays = [model[k] for k in model.files]
    scores = _harness_scores(spec, arrays, datas)
    summary = {**run_section(spec, out, wall, metrics), **_harness_section(scores, datas, spec)}
    summary["notes"] = [_HARNESS, _MAJORITY]
    mia = membership_attack(arrays, datas, model_spec=spec.model.as_table(), task=spec.task)
    for name, auc in mia.items():
        summary["privacy"]["sites"].setdefault(name, {})["membership_attack_auc"] = auc
    if mia:
        summary["privacy"]["mean_membership_attack_auc"] = float(np.mean(list(mia.values())))
    if baselines:
        _add_baselines(summary, spec, _without(datas, site_files, spec.baselines.drop))
        _add_private_local_only(summary, spec, site_files)
        for prefix in ("local_only_", "local_only_own_", "local_only_dp_own_"):
            summary.update(_site_means(summary["sites"], prefix, metrics=list(mean_metrics(scores))))
        summary["notes"].append(_LOCAL_ONLY)
        if spec.baselines.drop:
            summary["baselines_drop"] = list(spec.baselines.drop)
            summary["notes"].append(f"the baselines (alone, pooled) leave out {list(spec.baselines.drop)}")
    return summary


def _harness_section(
    scores: Mapping[str, Mapping[str, float]], datas: Sequence[SiteData], spec: JobSpec
) -> dict[str, Any]:
    """The final model's scores per site and their means, the task's trivial reference (binary: the
    majority class), and the sites left out of a metric's mean (``excluded``: AUC and AUPRC need
    both classes in a test set)."""
    reference = {d.site: spec.task.reference(d.y_train, d.y_test) for d in datas}
    classes = spec.task.name in ("binary", "multiclass")
    return {
        **{f"mean_site_{k}": v for k, v in mean_metrics(scores).items()},
        **{f"mean_{k}": v for k, v in mean_metrics(reference).items()},
        "sites": {name: {**vals, **reference[name]} for name, vals in scores.items()},
        "dropped_rows": {d.site: d.dropped_rows for d in datas},  # rows missing a used value, left out
        "excluded": sites_missing(scores),
        "one_class_test_sets": [d.site for d in datas if classes and np.unique(d.y_test).size < 2],
    }


def _site_means(
    sites: Mapping[str, Mapping[str, Any]], prefix: str, *, metrics: Sequence[str]
) -> dict[str, float]:
    """``mean_<prefix><metric>``: the mean over the sites that report ``<prefix><metric>``."""
    per_site = {
        name: {f"{prefix}{m}": vals[f"{prefix}{m}"] for m in metrics if f"{prefix}{m}" in vals}
        for name, vals in sites.items()
    }
    return {f"mean_{k}": v for k, v in mean_metrics(per_site).items()}


def _harness_scores(spec: JobSpec, arrays: Sequence[np.ndarray], datas: Sequence[SiteData]) -> dict[str, Any]:
    model = build_model(spec.model.as_table(), len(datas[0].features), seed=0)
    set_arrays(model, tuple(np.asarray(a, dtype=np.float64) for a in arrays))
    return {
        d.site: {k: v for k, v in evaluate_site(model, d, spec.evaluate, spec.task).items() if k != "n"}
        for d in datas
    }


def _add_private_local_only(summary: dict[str, Any], spec: JobSpec, site_files: Sequence[Path]) -> None:
    """``local_only_dp_own_<metric>`` per site and its mean, for a job with ``[privacy.dpsgd]``."""
    scores = local_only_private(spec, site_files)
    for name, vals in scores.items():
        summary["sites"].setdefault(name, {}).update({f"local_only_dp_own_{k}": v for k, v in vals.items()})


def _without(
    datas: Sequence[SiteData], site_files: Sequence[Path], drop: Sequence[str]
) -> Sequence[SiteData]:
    """The sites' data for the baselines: ``datas``, or reloaded without the ``[baselines] drop`` columns."""
    if not drop:
        return datas
    from fedcore.config import load_site
    from fedcore.data import prepare_site
    from fedcore.harness.loop import without

    return [prepare_site(without(load_site(p), drop)) for p in site_files]


def _add_baselines(summary: dict[str, Any], spec: JobSpec, datas: Sequence[SiteData]) -> None:
    base = local_and_pooled(
        datas,
        model_spec=spec.model.as_table(),
        cfg=spec.baselines.train,
        epochs=spec.baselines.epochs,
        seed=spec.seed,
        evaluate=spec.evaluate,
        steps=spec.baselines.steps,
    )
    for name, vals in base["sites"].items():
        pooled_here = {f"pooled_own_{k}": v for k, v in base["pooled_per_site"][name].items() if k != "n"}
        summary["sites"].setdefault(name, {}).update({**vals, **pooled_here})
    summary.update({k: v for k, v in base.items() if k.startswith("pooled_") and k != "pooled_per_site"})


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def average_runs(runs: Sequence[dict[str, Any]], reduce: Callable[[Any], Any]) -> dict[str, Any]:
    """``reduce`` over the runs of every number found in all of them (top level and per site).

    A number missing from one run (a site's AUC where that run's test set has one class) is left
    out; ``excluded`` and ``one_class_test_sets`` name every site left out in any run.
    """

    def over(values: Sequence[Any]) -> Any:
        same = all(v == values[0] for v in values)
        return values[0] if same and reduce is np.mean else float(reduce(values))

    def numbers(dicts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {
            k: over([d[k] for d in dicts])
            for k, v in dicts[0].items()
            if _is_number(v) and all(_is_number(d.get(k)) for d in dicts)
        }

    sites = {name: numbers([r["sites"].get(name, {}) for r in runs]) for name in runs[0].get("sites", {})}
    return {**numbers(runs), "sites": sites, **_left_out(runs)}


def _left_out(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The union over the runs of ``excluded`` (per metric) and ``one_class_test_sets``."""
    if not any("excluded" in r for r in runs):
        return {}
    metrics = sorted({m for r in runs for m in r.get("excluded", {})})
    excluded = {m: sorted({s for r in runs for s in r.get("excluded", {}).get(m, [])}) for m in metrics}
    one_class = sorted({s for r in runs for s in r.get("one_class_test_sets", [])})
    return {"excluded": excluded, "one_class_test_sets": one_class}

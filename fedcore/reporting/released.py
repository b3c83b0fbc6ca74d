"""What a run's summary says about what the sites released: the job, the per-round evaluations
the sites let through, every site's plan and charges, the rejected replies (``metrics.json`` only).

A deployment's coordinator writes this summary as it is; a simulation's harness adds its own
sections (``fedcore.harness.summary``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedcore.config.job import JobSpec

__all__ = ["build_released_summary", "mean_metrics", "run_section", "sites_missing"]


def mean_metrics(per_site: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over the sites that report it (``n`` excluded).

    A site without a metric (AUC and AUPRC are undefined on a test set with one class) is left out
    of that metric's mean; ``sites_missing`` names the sites left out.
    """
    keys = sorted({k for m in per_site.values() for k in m if k != "n"})
    return {k: float(np.mean([m[k] for m in per_site.values() if k in m])) for k in keys}


def sites_missing(per_site: Mapping[str, Mapping[str, float]]) -> dict[str, list[str]]:
    """Per metric some site reports, the sites that do not (left out of ``mean_metrics``)."""
    keys = sorted({k for m in per_site.values() for k in m if k != "n"})
    missing = {k: sorted(name for name, m in per_site.items() if k not in m) for k in keys}
    return {k: names for k, names in missing.items() if names}


_RELEASED = (
    "a deployment run: the per-site scores are the last round's evaluations the sites released to the "
    "coordinator (a site withholding them under DP has none); there are no simulation references"
)


def build_released_summary(spec: JobSpec, out: Path, wall: float) -> dict[str, Any]:
    """A deployment run's summary: only what the sites released (no harness, no baselines).

    The per-site scores are the last round's evaluations the sites released; a site whose policy
    withholds them under DP has none.
    """
    metrics = json.loads((out / "metrics.json").read_text())
    last = {
        name: {k: v for k, v in m.items() if k != "n"}
        for name, m in metrics["rounds"][-1]["evaluate"].items()
    }
    return {
        **run_section(spec, out, wall, metrics),
        **{f"mean_site_{k}": v for k, v in mean_metrics(last).items() if k != "withheld"},
        "sites": last,
        "excluded": sites_missing(last),
        "notes": [_RELEASED],
    }


def run_section(spec: JobSpec, out: Path, wall: float, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What every summary holds: the job, the per-round released scores, privacy, rejections."""
    return {
        "app": str(out),
        "job": spec.name,
        "aggregator": spec.aggregator.name,
        "rounds": spec.rounds,
        "seed": spec.seed,
        "wall_seconds": round(wall, 3),
        "metric": spec.main_metric,  # what the report plots and leads with
        **{
            f"per_round_mean_{m}": [mean_metrics(r["evaluate"]).get(m) for r in metrics["rounds"]]
            for m in dict.fromkeys(("accuracy", spec.main_metric))
        },
        "job_id": metrics.get("job_id"),
        "privacy": _privacy(spec, metrics),
        "rejected": {str(r["round"]): r["rejected"] for r in metrics["rounds"] if r["rejected"]},
        "rejected_replies": sum(len(r["rejected"]) for r in metrics["rounds"]),
    }


def _privacy(spec: JobSpec, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Per site: its plan (every release, its own epsilon, the composed total), budget left, audit head."""
    sites: dict[str, dict[str, Any]] = {}
    for name, adm in metrics.get("admission", {}).items():
        if not adm["accepted"]:
            sites[name] = {"accepted": False, "reason": adm["reason"]}
            continue
        plan = adm["plan"]
        entry = {k: plan[k] for k in ("delta", "releases", "budget_epsilon") if k in plan}
        entry["epsilon_unit"] = plan.get("unit")  # what the planned epsilon protects: example / customer
        entry["planned_epsilon"] = plan["epsilon"]
        entry["requested_epsilon"] = plan.get("target_epsilon")  # the total the job names (None: fixed noise)
        sites[name] = {"accepted": True, **entry, "audit_head": metrics.get("audit_heads", {}).get(name)}
    for r in metrics["rounds"]:  # what each site charged, as its train replies report it
        for name, m in r["train"].items():
            sites.setdefault(name, {}).update({k: m[k] for k in ("epsilon", "remaining_epsilon") if k in m})
    out: dict[str, Any] = {
        "sites": sites,
        "requested": {name: vars(s) for name, s in spec.mechanisms.items()},
        "he": spec.he is not None,
        "encrypted": (
            "every site's model update, and the aggregate the coordinator computes and sends back "
            "(the coordinator holds only the public context; sites decrypt and apply the step)"
            if spec.he is not None
            else "every site's model update, masked (secure aggregation): the coordinator unmasks only the "
            "sum over each round's survivors"
            if spec.secagg is not None
            else "nothing: updates travel in plaintext (protected by TLS in deployment)"
        ),
        "secagg": spec.secagg is not None,
    }
    he_bytes = [
        m["ciphertext_bytes"]
        for r in metrics["rounds"]
        for m in r["train"].values()
        if "ciphertext_bytes" in m
    ]
    if he_bytes:
        out["he_upload_bytes_per_site_round"] = sum(he_bytes) / len(he_bytes)
    return out

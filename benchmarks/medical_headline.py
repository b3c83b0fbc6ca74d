"""The medical example's own jobs (public reference constants, not FLamby's protocol), per hospital.

For each job (``default`` FedYogi, ``fedavg``, ``dp``) and seed 42-46: the final model's accuracy,
balanced accuracy and ROC AUC on each hospital's own test set (the simulation harness's scores, via
``fedcore.harness.loop``: the same site runtimes as a Flower run), beside each hospital's
majority-class reference (always predicting its training majority) and the simulation-only
baselines (each hospital alone, all rows pooled; Adam 1e-3, 50 epochs, each scored on its own test
set). Under DP the noise is secure (a rerun differs within the standard deviations shown).

    python benchmarks/medical_headline.py [--seeds 42 43 44 45 46]

Prints the table; writes benchmarks/results/medical_headline.json (``benchmarks/tables.py`` renders
the README's table from it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _machine import machine  # noqa: E402

from fedcore.clients.evaluation import evaluate_site  # noqa: E402
from fedcore.config import load_job  # noqa: E402
from fedcore.harness.baselines import local_and_pooled  # noqa: E402
from fedcore.harness.loop import run_inprocess  # noqa: E402
from fedcore.models import build_model, set_arrays  # noqa: E402
from fedcore.tasks import BINARY  # noqa: E402

APP = REPO / "examples" / "medical"
HOSPITALS = ("cleveland", "hungary", "switzerland", "va")
SITES = [APP / "sites" / f"{h}.toml" for h in HOSPITALS]
JOBS = ("default", "fedavg", "dp")
METRICS = ("accuracy", "balanced_accuracy", "auc")
OUT = REPO / "benchmarks" / "results" / "medical_headline.json"


def federated(job_name: str, seed: int) -> dict[str, dict[str, float]]:
    job = load_job(APP / "jobs" / f"{job_name}.toml")
    with tempfile.TemporaryDirectory() as state:
        arrays, sites = run_inprocess(job, SITES, seed=seed, state_dir=Path(state))
    model = build_model(job.model.as_table(), len(sites[0].data.features), seed=0)
    set_arrays(model, arrays)
    out = {}
    for s in sites:
        scores = evaluate_site(model, s.data, job.evaluate, job.task)
        out[s.name] = {m: scores[m] for m in METRICS if m in scores}
        out[s.name].update(BINARY.reference(s.data.y_train, s.data.y_test))
    return out


def baselines(seed: int, datas: list[Any]) -> dict[str, dict[str, dict[str, float]]]:
    job = load_job(APP / "jobs" / "default.toml")
    res = local_and_pooled(
        datas,
        model_spec=job.model.as_table(),
        cfg=job.baselines.train,
        epochs=job.baselines.epochs,
        seed=seed,
    )
    alone = {
        h: {
            m: res["sites"][h][f"local_only_own_{m}"]
            for m in METRICS
            if f"local_only_own_{m}" in res["sites"][h]
        }
        for h in HOSPITALS
    }
    pooled = {
        h: {m: res["pooled_per_site"][h][m] for m in METRICS if m in res["pooled_per_site"][h]}
        for h in HOSPITALS
    }
    return {"alone": alone, "pooled": pooled}


def _mean(runs: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Per hospital and metric the mean and sd over seeds; ``mean`` over the hospitals per seed, averaged."""
    out: dict[str, Any] = {}
    keys = sorted({k for r in runs for h in r.values() for k in h})
    for h in HOSPITALS:
        out[h] = {
            k: float(np.mean([r[h][k] for r in runs if k in r[h]]))
            for k in keys
            if any(k in r[h] for r in runs)
        }
    per_seed = [{k: float(np.mean([r[h][k] for h in HOSPITALS if k in r[h]])) for k in keys} for r in runs]
    out["mean"] = {k: float(np.mean([p[k] for p in per_seed])) for k in keys}
    out["sd_over_seeds"] = {k: float(np.std([p[k] for p in per_seed])) for k in keys}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    args = ap.parse_args()
    torch.set_num_threads(1)
    from fedcore.config import load_site
    from fedcore.data import prepare_site

    t0 = time.perf_counter()
    datas = [prepare_site(load_site(p)) for p in SITES]
    rows: dict[str, Any] = {}
    for name in JOBS:
        rows[name] = _mean([federated(name, s) for s in args.seeds])
        print(f"{name}: {rows[name]['mean']}", flush=True)
    base = [baselines(s, datas) for s in args.seeds]
    rows["alone"] = _mean([b["alone"] for b in base])
    rows["pooled"] = _mean([b["pooled"] for b in base])
    body = {
        "what": "examples/medical with its own site files (public reference constants); each model on each "
        "hospital's own test set; mean over seeds; `mean` = mean over the 4 hospitals (per seed, averaged)",
        "seeds": args.seeds,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
        "machine": machine(torch=torch.__version__),
    }
    OUT.write_text(json.dumps(body, indent=1))
    print(json.dumps(rows["default"]["mean"], indent=1))


if __name__ == "__main__":
    main()

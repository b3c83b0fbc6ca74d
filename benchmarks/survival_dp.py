"""Fed-TCGA-BRCA with DP-SGD: the Weibull likelihood beside the Cox one, without DP and with it.

``examples/survival`` (six regions, FLamby's split and features, a linear proportional-hazards
model, Harrell's C-index averaged over the six regions' test sets, as ``benchmarks/flamby_tcga.py``).
The Cox partial likelihood has no per-patient term, so DP-SGD cannot clip it; the Weibull likelihood
(shape 1, times in years) has one per patient (``fedcore/tasks/survival.py``). Rows:

- ``cox_pooled`` / ``weibull_pooled``: all training rows pooled, Adam, batch 8, 30 epochs (Cox: lr
  0.1 as FLamby; Weibull: lr 0.01), through ``fedcore.harness.baselines``;
- ``cox_fedavg`` / ``cox_fedyogi``: the example's jobs (FLamby's protocol, 5 rounds x 100 steps);
- ``weibull_fedavg`` / ``weibull_fedyogi``: the same jobs with ``likelihood = "weibull"`` and the
  clients on Adam lr 0.01 (plain SGD at FLamby's rates diverges: ``exp(eta)`` of an unlucky initial
  model makes the first gradients huge);
- ``dp_fedavg``: ``jobs/dp.toml`` (FedAvg, DP-SGD, epsilon 1 per region at delta 1e-5);
  ``dp_fedyogi``: the same with FedYogi (server lr 0.1); ``dp_fedavg_eps3``: dp.toml at epsilon 3.

The federated runs go through fedcore's site runtimes (``fedcore.harness.loop``) with a ledger each;
``ledger_epsilon`` is what each region's ledger holds after the DP job (everything it charged,
composed by its PLD accountant). The DP noise comes from the secure source (not seeded): the DP
rows differ from run to run within their spread over seeds.

    python benchmarks/survival_dp.py [--seeds 42 43 44 45 46]

Prints a table; writes benchmarks/results/survival_dp.json.
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
sys.path.insert(0, str(REPO / "examples" / "survival"))

from _machine import machine  # noqa: E402
from prepare import REGIONS, prepare  # noqa: E402

from fedcore.clients.evaluation import evaluate_site  # noqa: E402
from fedcore.config import load_job, load_site  # noqa: E402
from fedcore.data import SiteData, prepare_site  # noqa: E402
from fedcore.harness.baselines import local_and_pooled  # noqa: E402
from fedcore.harness.loop import run_inprocess  # noqa: E402
from fedcore.models import build_model, set_arrays  # noqa: E402
from fedcore.site.guard import state_paths  # noqa: E402
from fedcore.site.ledger import PrivacyLedger  # noqa: E402

APP = REPO / "examples" / "survival"
SITES = [APP / "sites" / f"{r}.toml" for r in REGIONS]
SEEDS = [42, 43, 44, 45, 46]
OUT = REPO / "benchmarks" / "results" / "survival_dp.json"
WEIBULL = ['task.likelihood="weibull"', "task.time_scale=365.25", 'train.optimizer="adam"', "train.lr=0.01"]
RUNS: dict[str, tuple[str, list[str]]] = {  # row -> (job file, --set overrides)
    "cox_fedavg": ("fedavg", []),
    "cox_fedyogi": ("fedyogi", []),
    "weibull_fedavg": ("fedavg", WEIBULL),
    "weibull_fedyogi": ("fedyogi", WEIBULL),
    "dp_fedavg": ("dp", []),
    "dp_fedyogi": ("dp", ['aggregator.name="fedyogi"', "aggregator.server_lr=0.1"]),
    "dp_fedavg_eps3": ("dp", ["privacy.dpsgd.epsilon=3.0"]),
}


def c_index(arrays: Any, job: Any, datas: list[SiteData]) -> float:
    model = build_model(job.model.as_table(), len(datas[0].features), seed=0)
    set_arrays(model, arrays)
    return float(np.mean([evaluate_site(model, d, None, job.task)["c_index"] for d in datas]))


def federated(name: str, seed: int, datas: list[SiteData]) -> tuple[float, dict[str, float]]:
    """The run's C-index and, per region, the epsilon its ledger holds afterwards."""
    job_file, sets = RUNS[name]
    job = load_job(APP / "jobs" / f"{job_file}.toml", sets)
    with tempfile.TemporaryDirectory() as state:
        arrays, _ = run_inprocess(job, SITES, seed=seed, state_dir=Path(state))
        spent = {}
        for path in SITES:
            site = load_site(path)
            ledger = PrivacyLedger(state_paths(site, Path(state)).ledger, site=site.name)
            spent[site.name] = ledger.spent(site.dataset)[0]
    return c_index(arrays, job, datas), spent


def pooled(likelihood: str, seed: int, datas: list[SiteData]) -> float:
    sets = [] if likelihood == "cox" else [*WEIBULL[:2], "baselines.lr=0.01"]
    job = load_job(APP / "jobs" / "fedavg.toml", sets)
    res = local_and_pooled(
        datas, model_spec=job.model.as_table(), cfg=job.baselines.train, epochs=30, seed=seed
    )
    return float(res["pooled_c_index"])


def summarise(got: list[float], seeds: list[int]) -> dict[str, Any]:
    return {
        "per_seed": dict(zip(map(str, seeds), got, strict=True)),
        "mean_c_index": float(np.mean(got)),
        "sd_over_seeds": float(np.std(got)),
        "min_c_index": float(np.min(got)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    prepare(APP)
    datas = [prepare_site(load_site(p)) for p in SITES]
    rows: dict[str, Any] = {}
    t0 = time.perf_counter()
    for likelihood in ("cox", "weibull"):
        rows[f"{likelihood}_pooled"] = summarise(
            [pooled(likelihood, s, datas) for s in args.seeds], args.seeds
        )
    for name in RUNS:
        runs = [federated(name, s, datas) for s in args.seeds]
        rows[name] = summarise([c for c, _ in runs], args.seeds)
        if RUNS[name][0] == "dp":
            per_site = {site: max(r[site] for _, r in runs) for site in runs[0][1]}
            rows[name]["ledger_epsilon"] = per_site  # the largest over seeds (each seed: fresh ledgers)
        print(f"{name:16s} {rows[name]['mean_c_index']:.4f} ({rows[name]['sd_over_seeds']:.4f})", flush=True)
    body = {
        "protocol": "examples/survival, FLamby's Fed-TCGA-BRCA split (see benchmarks/survival_dp.py)",
        "seeds": args.seeds,
        "metric": "Harrell's C-index, mean over the six regions' test sets",
        "epsilon": 1.0,
        "delta": 1e-5,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
        "machine": machine(torch=torch.__version__),
    }
    OUT.write_text(json.dumps(body, indent=1))
    print("\n| run | C-index mean (sd over seeds) | min |")
    print("|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['mean_c_index']:.3f} ({r['sd_over_seeds']:.3f}) | {r['min_c_index']:.3f} |")


if __name__ == "__main__":
    main()

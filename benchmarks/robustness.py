"""Attack x aggregator on the heart and the finance data, 5 seeds, under fedcore's site runtimes.

Every run is a real job (``fedcore.harness.loop.run_inprocess``: the sites' plans, guards and ledgers,
the job's aggregator, the ``[attack]`` of a simulation, the coordinator's norm screen), one attacking
site, scored by the simulation harness on every site's test set (the attacker's included):

- **heart**: the four hospitals (Fed-Heart-Disease), logistic regression, 10 rounds x 50 local SGD
  steps (batch 4, lr 0.00316); VA attacks. Metrics: mean accuracy and ROC AUC over the hospitals.
- **finance**: the five banks of ``examples/finance`` (its data drawn once with seed 42), MLP 15-16-1,
  10 rounds x 20 local Adam steps (batch 128, ``pos_weight`` 5); bank_0 (the largest) attacks.
  Metrics: mean ROC AUC and AUPRC over the banks (frauds are ~2 %: accuracy says nothing).
- **heart under DP**: the same as heart with DP-SGD at every hospital (epsilon 1 for the whole job,
  every release included, delta 1e-5, clip 1.1): what robustness costs in epsilon is read from each
  hospital's ledger (the accountant's figure) beside the accuracy.

Aggregators (f = 1, one attacker): ``fedavg``, ``fedavg`` with adaptive clipping, coordinate
``median``, ``trmean``, ``geometric_median``, ``centered_clipping`` (tau 0.1 heart, 0.5 finance: about
the honest update norms; 3 iterations), NNM + ``trmean``; on the five banks also ``krum`` and
``multikrum``. A rule whose federation is too small for its f (Krum needs 5 updates, Bulyan 7) is
refused before round 1, and the refusal is recorded instead of a number. Attacks: none, sign flip,
scaling x10, Gaussian (sigma 1), ALIE (f = 1), IPM (epsilon 0.1), label flip. Each cell: the mean
over seeds of the final model's metrics and the drop against the same aggregator without attack
(paired by seed).

    python benchmarks/robustness.py [--quick] [--seeds 42 43 44 45 46] [--data heart finance heart_dp]

Writes benchmarks/results/robustness.json (``--quick``: robustness_quick.json) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _machine import machine  # noqa: E402
from tables import robustness_table  # noqa: E402

import fedcore.clients.runtime  # noqa: E402
from fedcore.clients.evaluation import evaluate_site  # noqa: E402
from fedcore.config import apply_overrides, parse_job, read_toml  # noqa: E402
from fedcore.config.site import SiteConfig  # noqa: E402
from fedcore.data import SiteData, prepare_site  # noqa: E402
from fedcore.errors import ConfigError  # noqa: E402
from fedcore.harness.app import load_app, run_prepare  # noqa: E402
from fedcore.harness.loop import run_inprocess  # noqa: E402
from fedcore.models import build_model, set_arrays  # noqa: E402

_PARSED: dict[Path, SiteData] = {}


def _parsed_once(site: SiteConfig) -> SiteData:
    """``prepare_site``, once per site file in this process: every run reads the same data, and the
    banks' CSVs take seconds to parse (the runs' own work is unchanged)."""
    if site.path not in _PARSED:
        _PARSED[site.path] = prepare_site(site)
    return _PARSED[site.path]


fedcore.clients.runtime.prepare_site = _parsed_once  # type: ignore[assignment]


@dataclass(frozen=True)
class Dataset:
    app: Path
    job: str
    sets: tuple[str, ...]
    attacker: str
    metrics: tuple[str, ...]
    tau: float  # centered clipping's radius, about the honest update norms


DATASETS = {
    "heart": Dataset(
        REPO / "examples" / "medical", "fedavg", ("job.rounds=10", "train.local_steps=50"), "va",
        ("accuracy", "auc"), 0.1,
    ),
    "finance": Dataset(
        REPO / "examples" / "finance", "default", ("job.rounds=10", "train.local_steps=20"), "bank_0",
        ("auc", "auprc"), 0.5,
    ),
    "heart_dp": Dataset(
        REPO / "examples" / "medical", "dp", ("job.rounds=10", "train.local_steps=50"), "va",
        ("accuracy", "auc"), 0.1,
    ),
}  # fmt: skip
ATTACKS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "sign_flip": {"name": "sign_flip"},
    "scaling": {"name": "scaling", "factor": 10.0},
    "gaussian": {"name": "gaussian", "sigma": 1.0},
    "alie": {"name": "alie"},
    "ipm": {"name": "ipm", "epsilon": 0.1},
    "label_flip": {"name": "label_flip"},
}
DP_ATTACKS = ("none", "sign_flip", "ipm", "label_flip")


def aggregators(data: Dataset) -> dict[str, dict[str, Any]]:
    """The ``[aggregator]`` tables compared (f = 1)."""
    out: dict[str, dict[str, Any]] = {
        "fedavg": {"name": "fedavg"},
        "fedavg+clipping": {"name": "fedavg", "clipping": "adaptive"},
        "median": {"name": "median"},
        "trmean": {"name": "trmean", "f": 1},
        "geometric_median": {"name": "geometric_median", "f": 1},
        "centered_clipping": {"name": "centered_clipping", "f": 1, "tau": data.tau, "iterations": 3},
        "nnm+trmean": {"name": "trmean", "f": 1, "pre": "nnm"},
        "krum": {"name": "krum", "f": 1},
        "multikrum": {"name": "multikrum", "f": 1},
        "bulyan": {"name": "bulyan", "f": 1},
    }
    return out


def job_table(
    data: Dataset, aggregator: dict[str, Any], attack: dict[str, Any] | None, rounds: str
) -> dict[str, Any]:
    table = apply_overrides(read_toml(data.app / "jobs" / f"{data.job}.toml"), [*data.sets, rounds])
    table["aggregator"] = dict(aggregator)
    table.pop("attack", None)
    if attack is not None:
        table["attack"] = {**attack, "sites": [data.attacker]}
    return table


def one(data: Dataset, table: dict[str, Any], sites: list[Path], seed: int) -> dict[str, float]:
    """The final model's mean metrics over the sites, and the mean epsilon their ledgers charged."""
    spec = parse_job(table, "robustness")
    with tempfile.TemporaryDirectory() as state:
        g, runtimes = run_inprocess(spec, sites, seed=seed, state_dir=Path(state))
        model = build_model(spec.model.as_table(), len(runtimes[0].data.features), seed=0)
        set_arrays(model, g)
        scores = [evaluate_site(model, r.data) for r in runtimes]
        spent = [r.guard.ledger.spent(r.site.dataset)[0] for r in runtimes]
    out = {m: float(np.mean([s[m] for s in scores if m in s])) for m in data.metrics}
    return out | {"epsilon": float(np.mean(spent))}


def run(name: str, seeds: list[int], quick: bool) -> dict[str, Any]:
    data = DATASETS[name]
    app = load_app(data.app)
    if name == "finance":
        run_prepare(app, 42)  # the banks' data, drawn once; the seeds vary the training
    sites = list(app.sites)
    rounds = "job.rounds=2" if quick else "job.rounds=10"
    attacks = [a for a in ATTACKS if a in DP_ATTACKS] if name == "heart_dp" else list(ATTACKS)
    cells: dict[str, dict[str, Any]] = {}
    refused: dict[str, str] = {}
    for agg, table in aggregators(data).items():
        try:
            parse_job(job_table(data, table, None, rounds), f"{name} {agg}")
        except ConfigError as err:
            refused[agg] = str(err).split(f"{name} {agg}: ", 1)[-1]
            print(f"{name:9} {agg:18} refused: {refused[agg]}", flush=True)
            continue
        cells[agg] = {}
        for attack in attacks:
            t0 = time.perf_counter()
            runs = [one(data, job_table(data, table, ATTACKS[attack], rounds), sites, s) for s in seeds]
            cells[agg][attack] = {"per_seed": runs, "seconds": time.perf_counter() - t0}
            shown = ", ".join(f"{m} {np.mean([r[m] for r in runs]):.3f}" for m in data.metrics)
            print(f"{name:9} {agg:18} {attack:11} {shown} ({time.perf_counter() - t0:.0f} s)", flush=True)
    _summarise(cells, data.metrics)
    return {
        "app": str(data.app.relative_to(REPO)), "job": data.job, "settings": list(data.sets),
        "attacker": data.attacker, "metrics": list(data.metrics), "cells": cells, "refused": refused,
    }  # fmt: skip


def _summarise(cells: dict[str, dict[str, Any]], metrics: tuple[str, ...]) -> None:
    """Each cell's mean and sd over seeds, and its drop against the same rule without attack."""
    for by_attack in cells.values():
        clean = by_attack["none"]["per_seed"]
        for cell in by_attack.values():
            runs = cell["per_seed"]
            for m in (*metrics, "epsilon"):
                cell[m] = float(np.mean([r[m] for r in runs]))
                cell[f"{m}_sd"] = float(np.std([r[m] for r in runs]))
            for m in metrics:
                cell[f"drop_{m}"] = float(np.mean([c[m] - r[m] for c, r in zip(clean, runs, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    ap.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--quick", action="store_true", help="2 rounds, the first seed: a smoke run")
    args = ap.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    t0 = time.perf_counter()
    results = {name: run(name, seeds, args.quick) for name in args.data}
    body = {
        "seeds": seeds,
        "quick": args.quick,
        "attacks": ATTACKS,
        "wall_seconds": time.perf_counter() - t0,
        "machine": machine(),
        "results": results,
    }
    out = REPO / "benchmarks" / "results" / ("robustness_quick.json" if args.quick else "robustness.json")
    out.write_text(json.dumps(body, indent=1))
    for name, result in results.items():
        print("\n" + robustness_table(name, result))


if __name__ == "__main__":
    main()

"""Which job should ``fedcore init`` write? Federated vs alone AUC per site on three tabular data sets.

Each data set is one CSV split into sites by a column, as a newcomer would do it::

    fedcore init DATA.csv --out APP --label L --positive P --site-column C [--id ...]

- ``heart``: UCI heart disease, the four hospitals' files joined with a ``hospital`` column
  (../shared/data/heart_disease), label ``num`` > 0;
- ``german``: Statlog German credit (../shared/data/german_credit), named columns, label ``class``
  as the words ``good``/``bad`` (positive ``bad``), sites by ``housing`` (rent / own / for free);
- ``fraud``: the finance example's card transactions (fedcore.datasets, seed 42: synthetic, generated
  here, not a file of ../shared/data), five banks by ``bank``, the handbook's 15 features.

For each candidate (``--set`` overrides of the default job ``fedcore init`` writes) and seed, the
federated model is trained with the site runtimes in one process (``fedcore.harness.loop``: the same
training code ``fedcore run`` runs under Flower) and each site's AUC on its own test set is compared
with the site alone (``local_only_own_auc``, the app's ``[baselines]``: what ``fedcore run`` reports).
Prints a table per candidate; writes benchmarks/results/init_defaults.json.

    python benchmarks/init_defaults.py [--seeds 0 1 2] [--only heart german] [--candidates default]
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

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from _machine import machine  # noqa: E402

DATA = REPO.parent / "shared" / "data"
HEART = [
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
    "num",
]
GERMAN = [
    "checking_status",
    "duration",
    "credit_history",
    "purpose",
    "credit_amount",
    "savings",
    "employment",
    "installment_rate",
    "personal_status",
    "other_debtors",
    "residence_since",
    "property",
    "age",
    "other_installment_plans",
    "housing",
    "existing_credits",
    "job",
    "num_dependents",
    "telephone",
    "foreign_worker",
    "class",
]
HOUSING = {"A151": "rent", "A152": "own", "A153": "for_free"}
FRAUD_IDS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_time_seconds", "tx_time_days",
             "fraud_scenario", "is_test")  # fmt: skip

# name -> the job overrides tried; "written" is whatever fedcore init writes now
CANDIDATES: dict[str, list[str]] = {
    "written": [],
    "sgd_lr0.05_b16_fedavg": ["train.optimizer='sgd'", "train.lr=0.05", "train.batch_size=16",
                              "aggregator.name='fedavg'", "job.rounds=10", "train.local_steps=50"],
    "adam_lr0.01_b32_fedavg": ["train.optimizer='adam'", "train.lr=0.01", "train.batch_size=32",
                               "aggregator.name='fedavg'", "job.rounds=10", "train.local_steps=50"],
    "adam_lr0.003_b32_fedavg_r20": ["train.optimizer='adam'", "train.lr=0.003", "train.batch_size=32",
                                    "aggregator.name='fedavg'", "job.rounds=20", "train.local_steps=50"],
    "sgd_lr0.1_b32_fedavg_r20": ["train.optimizer='sgd'", "train.lr=0.1", "train.batch_size=32",
                                 "aggregator.name='fedavg'", "job.rounds=20", "train.local_steps=50"],
}  # fmt: skip
# the site alone, two ways: the compute the job gives a site (rounds x local_steps Adam steps, what
# fedcore init's [baselines] writes), and trained long (30 epochs, the former default)
ALONE = {"alone_auc": {"steps": True}, "alone_long_auc": {"epochs": 30, "batch_size": 16}}


def heart_csv(path: Path) -> dict[str, Any]:
    rows = ["hospital," + ",".join(HEART)]
    for name in ("cleveland", "hungarian", "switzerland", "va"):
        for line in (DATA / "heart_disease" / f"processed.{name}.data").read_text().splitlines():
            if line.strip():
                rows.append(f"{name},{line.strip()}")
    path.write_text("\n".join(rows) + "\n")
    return {"label": "num", "positive_above": 0.0, "site_column": "hospital"}


def german_csv(path: Path) -> dict[str, Any]:
    rows = [",".join(GERMAN)]
    for line in (DATA / "german_credit" / "german.data").read_text().splitlines():
        v = line.split()
        if v:
            v[14] = HOUSING[v[14]]
            v[20] = {"1": "good", "2": "bad"}[v[20]]
            rows.append(",".join(v))
    path.write_text("\n".join(rows) + "\n")
    return {"label": "class", "positive": ["bad"], "site_column": "housing"}


def fraud_csv(path: Path) -> dict[str, Any]:
    import pandas as pd

    cached = Path(tempfile.gettempdir()) / "fedcore-init-defaults-fraud.csv"  # 40 s to generate
    if cached.is_file():
        path.write_bytes(cached.read_bytes())
        return {"label": "fraud", "positive": ["1"], "site_column": "bank", "ids": FRAUD_IDS}

    sys.path.insert(0, str(REPO / "examples" / "finance"))
    from prepare import prepare  # the finance example's hook: data/bank_<b>.csv

    with tempfile.TemporaryDirectory() as tmp:
        prepare(Path(tmp), seed=42)
        frames = [pd.read_csv(p) for p in sorted((Path(tmp) / "data").glob("bank_*.csv"))]
    pd.concat(frames).to_csv(path, index=False)
    cached.write_bytes(path.read_bytes())
    return {"label": "fraud", "positive": ["1"], "site_column": "bank", "ids": FRAUD_IDS}


MAKERS = {"heart": heart_csv, "german": german_csv, "fraud": fraud_csv}


def evaluate(app: Path, sets: list[str], seed: int) -> dict[str, dict[str, float]]:
    """Per site: the federated model's AUC on its own test set, and the site alone's."""
    from fedcore.clients.evaluation import evaluate_site
    from fedcore.config import TrainConfig, load_job
    from fedcore.harness.app import load_app
    from fedcore.harness.baselines import local_and_pooled
    from fedcore.harness.loop import run_inprocess
    from fedcore.models import build_model, set_arrays

    spec = load_job(app / "jobs" / "default.toml", [*sets, f"job.seed={seed}"])
    g, sites = run_inprocess(spec, list(load_app(app).sites), seed=seed)
    model = build_model(spec.model.as_table(), len(sites[0].data.features), seed=0)
    set_arrays(model, g)
    datas = [s.data for s in sites]
    out: dict[str, dict[str, float]] = {
        d.site: {
            "auc": evaluate_site(model, d, spec.evaluate).get("auc", float("nan")),  # nan: one class
            "train_rows": len(d.y_train),
        }
        for d in datas
    }
    for key, how in ALONE.items():
        cfg = TrainConfig(lr=0.01, batch_size=int(how.get("batch_size", 32)), optimizer="adam")
        base = local_and_pooled(
            datas, model_spec=spec.model.as_table(), cfg=cfg, epochs=int(how.get("epochs", 1)), seed=seed,
            evaluate=spec.evaluate, steps=spec.rounds * spec.local_steps if how.get("steps") else None,
        )  # fmt: skip
        for d in datas:
            out[d.site][key] = base["sites"][d.site].get("local_only_own_auc", float("nan"))
            out[d.site][key.replace("alone", "pooled")] = base["pooled_per_site"][d.site].get(
                "auc", float("nan")
            )
    return out


def main() -> None:
    from fedcore.appinit import init_app

    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="+", default=list(MAKERS))
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    a = p.parse_args()
    results: dict[str, Any] = {"machine": machine(), "seeds": a.seeds, "candidates": {}}
    with tempfile.TemporaryDirectory(prefix="init-defaults-") as tmp:
        apps = {}
        for name in a.only:
            csv = Path(tmp) / f"{name}.csv"
            options = MAKERS[name](csv)
            apps[name] = Path(tmp) / name
            init_app(csv, apps[name], **options)
        for cand in a.candidates:
            per: dict[str, Any] = {}
            for name, app in apps.items():
                t0 = time.perf_counter()
                runs = [evaluate(app, CANDIDATES[cand], seed) for seed in a.seeds]
                sites = {s: {k: float(np.mean([r[s][k] for r in runs])) for k in runs[0][s]} for s in runs[0]}
                wins = [float(np.nanmin([r[s]["auc"] - r[s]["alone_auc"] for s in r])) for r in runs]
                per[name] = {"sites": sites, "worst_gain_per_seed": wins, "seconds": time.perf_counter() - t0}
                print(f"\n[{cand}] {name} ({time.perf_counter() - t0:.0f} s)")
                print(f"{'site':<14}{'rows':>8}{'federated':>11}{'alone':>8}{'pooled':>8}{'gain':>8}"
                      f"{'alone30ep':>10}{'gain':>8}")  # fmt: skip
                for s, v in sites.items():
                    print(f"{s:<14}{v['train_rows']:>8.0f}{v['auc']:>11.3f}{v['alone_auc']:>8.3f}"
                          f"{v['pooled_auc']:>8.3f}{v['auc'] - v['alone_auc']:>+8.3f}"
                          f"{v['alone_long_auc']:>10.3f}{v['auc'] - v['alone_long_auc']:>+8.3f}")  # fmt: skip
                print("worst site gain per seed:", " ".join(f"{w:+.3f}" for w in wins))
            results["candidates"][cand] = {"sets": CANDIDATES[cand], "data": per}
    out = REPO / "benchmarks" / "results" / "init_defaults.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

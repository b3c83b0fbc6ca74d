"""Which job should ``fedcore init`` write? Federated vs alone AUC per site on three tabular data sets.

Each data set is one CSV split into sites by a column, as a newcomer would do it::

    fedcore init DATA.csv --out APP --label L --positive P --site-column C [--id ...] --seed S

- ``heart``: UCI heart disease, the four hospitals' files joined with a ``hospital`` column
  (../shared/data/heart_disease), label ``num`` > 0;
- ``german``: Statlog German credit (../shared/data/german_credit), named columns, label ``class``
  as the words ``good``/``bad`` (positive ``bad``), sites by ``housing`` (rent / own / for free);
- ``fraud``: the finance example's card transactions (fedcore.datasets, seed 42: synthetic, generated
  here, not a file of ../shared/data), five banks by ``bank``, the handbook's 15 features.

Each seed ``S`` is a new app (``fedcore init --seed S``: a new random train/test split at every site)
and a new run (``job.seed = S``). A site's test set holds 25-90 rows here, so one split's AUC moves by
a few hundredths with the split alone; a gain is read as the mean over seeds with its standard
error, never from one split. For each seed the federated model is trained with the site runtimes in
one process (``fedcore.harness.loop``: the training code ``fedcore run`` runs under Flower) and each
site's AUC on its own test set is compared with the site alone (``local_only_own_auc``, the app's
``[baselines]``: what ``fedcore run`` reports) and with all rows pooled. Three ways a site could
personalise the federated model are measured beside it, not shipped (see docs/benchmarks.md):
``finetune``, 200 more Adam steps on its own rows; ``finetune_prox``, the same with a proximal term
(mu 1) to the federated model; ``ensemble``, the mean of the federated and the fine-tuned model's
probabilities.

Candidates (``--candidates``): ``written``, the app as ``fedcore init`` writes it; job overrides
(``CANDIDATES``); ``drop_gaps``, the same jobs on the site files init wrote before
``indicate_missing`` (features empty in more than a fifth of the rows left out, rows with another gap
dropped).

    python benchmarks/init_defaults.py [--seeds 0 ... 9] [--only heart german] [--candidates written]

Prints a table per candidate and data set; writes benchmarks/results/init_defaults.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
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

# name -> the job overrides tried; "written" is whatever fedcore init writes now. Earlier candidates
# (SGD lr 0.05 batch 16; Adam lr 0.003 and SGD lr 0.1 over 20 rounds) were measured on one split.
CANDIDATES: dict[str, list[str]] = {
    "written": [],
    "sgd_lr0.05_b16_fedavg": ["train.optimizer='sgd'", "train.lr=0.05", "train.batch_size=16",
                              "aggregator.name='fedavg'", "job.rounds=10", "train.local_steps=50"],
    "mlp16": ["model.name='mlp'", "model.hidden=[16]"],
    "fedyogi": ["aggregator.name='fedyogi'", "aggregator.server_lr=0.01"],
    "rounds20": ["job.rounds=20"],
    "drop_gaps": [],  # the sites as init wrote them before indicate_missing (``drop_gaps``)
}  # fmt: skip
MOSTLY_EMPTY = 0.2  # drop_gaps: a feature empty in more of the file's rows was left out
FINETUNE_STEPS = 200  # Adam lr 0.01, batch 32, as the site alone
FINETUNE = {"finetune_auc": 0.0, "finetune_prox_auc": 1.0}  # key -> proximal mu


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


def drop_gaps(app: Path, csv: Path) -> Path:
    """A copy of ``app`` with its sites as `fedcore init` wrote them before ``indicate_missing``: a
    feature empty in more than a fifth of the file's rows left out (``[schema] drop``), and every row
    with another empty feature left out by the loader."""
    import pandas as pd

    out = app.with_name(app.name + "-drop-gaps")
    shutil.copytree(app, out)
    share = pd.read_csv(csv, na_values=["?", "NA", ""], keep_default_na=False).isna().mean()
    drop = [c for c, v in share.items() if v > MOSTLY_EMPTY]
    for site in (out / "sites").glob("*.toml"):
        text = site.read_text().replace(", indicate_missing = true", "")
        site.write_text(text.replace("\n[schema]\n", f"\n[schema]\ndrop = {json.dumps(drop)}\n", 1))
    return out


def evaluate(app: Path, sets: list[str], seed: int) -> dict[str, dict[str, float]]:
    """Per site: AUC on its own test set of the federated model, the site alone, all rows pooled,
    and the federated model fine-tuned at the site (``FINETUNE``)."""
    from sklearn.metrics import roc_auc_score

    from fedcore.clients.trainer import predict_scores, train_steps
    from fedcore.config import TrainConfig, load_job
    from fedcore.harness.app import load_app
    from fedcore.harness.baselines import local_and_pooled
    from fedcore.harness.loop import run_inprocess
    from fedcore.models import build_model, set_arrays

    spec = load_job(app / "jobs" / "default.toml", [*sets, f"job.seed={seed}"])
    g, sites = run_inprocess(spec, list(load_app(app).sites), seed=seed)
    datas = [s.data for s in sites]

    def scores(d: Any, mu: float | None = None) -> Any:
        model = build_model(spec.model.as_table(), len(d.features), seed=0)
        set_arrays(model, g)
        if mu is not None:
            cfg = TrainConfig(lr=0.01, batch_size=32, optimizer="adam", proximal_mu=mu)
            train_steps(model, d.x_train, d.y_train, cfg, steps=FINETUNE_STEPS, seed=seed)
        return predict_scores(model, d.x_test)

    def auc(d: Any, p: Any) -> float:  # nan: a test set with one class
        return float(roc_auc_score(d.y_test, p)) if len(np.unique(d.y_test)) > 1 else float("nan")

    out: dict[str, dict[str, float]] = {}
    for d in datas:
        fed, tuned = scores(d), {key: scores(d, mu) for key, mu in FINETUNE.items()}
        out[d.site] = {"auc": auc(d, fed), "train_rows": len(d.y_train), "test_rows": len(d.y_test)}
        out[d.site].update({key: auc(d, p) for key, p in tuned.items()})
        out[d.site]["ensemble_auc"] = auc(d, (fed + tuned["finetune_auc"]) / 2)
    base = local_and_pooled(
        datas, model_spec=spec.model.as_table(), cfg=spec.baselines.train, epochs=spec.baselines.epochs,
        seed=seed, evaluate=spec.evaluate, steps=spec.baselines.steps,
    )  # fmt: skip  # the app's [baselines], as `fedcore run` computes them
    for d in datas:
        out[d.site]["alone_auc"] = base["sites"][d.site].get("local_only_own_auc", float("nan"))
        out[d.site]["pooled_auc"] = base["pooled_per_site"][d.site].get("auc", float("nan"))
    return out


def site_figures(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per site over the seeds: each figure's mean, and the federated gain over alone with its
    standard error and the seeds it is >= 0 (seeds where a test set has one class are left out)."""
    out: dict[str, dict[str, float]] = {}
    for s in runs[0]:
        means = {k: float(np.nanmean([r[s][k] for r in runs])) for k in runs[0][s]}
        gain = np.array([r[s]["auc"] - r[s]["alone_auc"] for r in runs])
        gain = gain[np.isfinite(gain)]
        n = len(gain)
        out[s] = {**means, "seeds_scored": float(n)}
        if n:
            se = float(gain.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
            out[s].update(gain=float(gain.mean()), gain_se=se, seeds_gain_ge_0=float((gain >= 0).sum()))
    return out


def main() -> None:
    from fedcore.appinit import init_app

    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--only", nargs="+", default=list(MAKERS))
    p.add_argument("--candidates", nargs="+", default=["written"])
    a = p.parse_args()
    out = REPO / "benchmarks" / "results" / "init_defaults.json"
    # a data set measured again replaces its entry; the others are kept (each entry names its seeds)
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {"candidates": {}}
    results.update(machine=machine(), finetune_steps=FINETUNE_STEPS)
    with tempfile.TemporaryDirectory(prefix="init-defaults-") as tmp:
        for name in a.only:
            csv = Path(tmp) / f"{name}.csv"
            options = MAKERS[name](csv)
            apps = {seed: Path(tmp) / f"{name}-{seed}" for seed in a.seeds}
            for seed, app in apps.items():
                init_app(csv, app, seed=seed, **options)
            for cand in a.candidates:
                runs = (
                    apps if cand != "drop_gaps" else {seed: drop_gaps(app, csv) for seed, app in apps.items()}
                )
                t0 = time.perf_counter()
                sites = site_figures([evaluate(app, CANDIDATES[cand], seed) for seed, app in runs.items()])
                entry = results["candidates"].setdefault(cand, {"sets": CANDIDATES[cand], "data": {}})
                entry["data"][name] = {"sites": sites, "seeds": a.seeds, "seconds": time.perf_counter() - t0}
                print(f"\n[{cand}] {name}: AUC, mean of seeds {a.seeds} ({time.perf_counter() - t0:.0f} s)")
                print(f"{'site':<14}{'train':>6}{'test':>6}{'federated':>11}{'alone':>8}{'gain':>8}{'+-se':>7}"
                      f"{'>=0':>6}{'pooled':>8}{'finetune':>10}{'ft prox':>9}{'ensemble':>10}")  # fmt: skip
                for s, v in sites.items():
                    g, se, won = v.get("gain", np.nan), v.get("gain_se", np.nan), v.get("seeds_gain_ge_0", 0)
                    print(f"{s:<14}{v['train_rows']:>6.0f}{v['test_rows']:>6.0f}{v['auc']:>11.3f}"
                          f"{v['alone_auc']:>8.3f}{g:>+8.3f}{se:>7.3f}{won:>3.0f}/{v['seeds_scored']:<2.0f}"
                          f"{v['pooled_auc']:>8.3f}{v['finetune_auc']:>10.3f}"
                          f"{v['finetune_prox_auc']:>9.3f}{v['ensemble_auc']:>10.3f}")  # fmt: skip
                out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

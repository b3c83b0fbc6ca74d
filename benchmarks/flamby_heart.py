"""Fed-Heart-Disease under FLamby's published protocol, every strategy, 5 seeds, against the paper.

FLamby (du Terrail et al., NeurIPS 2022 Datasets and Benchmarks; owkin/FLamby, results in
``flamby/results/results_benchmark_fed_heart_disease/heart_seed4[2-6].csv``): the four hospitals of
``examples/medical`` with the published preprocessing (each hospital standardised by its own training
rows: the site files' constants removed), logistic regression, accuracy at 0.5 averaged over the four
test sets. Pooled and local-only: Adam lr 1e-3, batch 4, 50 epochs (the pooled rows standardised with
the pooled training statistics, as FLamby's pooled data set is). Federated: 15 rounds x 100 local SGD
steps, batch 4, FLamby's per-strategy learning rates (``flamby/config_heart_disease.json``).

The federated strategies run through fedcore's site runtimes (``fedcore.harness.loop``: admission,
plan, guard, ledger, the same aggregators as a Flower run). Two initialisations per seed:

- ``flamby``: the seed's ``torch.manual_seed(seed); nn.Linear(13, 1)`` weights, each mapped to the
  feature FLamby's column order gives it (FLamby one-hot encodes cp and restecg last; fedcore in
  place), so seed s starts where FLamby's seed s started;
- ``fedcore``: fedcore's own ``build_model`` for the seed (the same draws, in fedcore's column order).

    python benchmarks/flamby_heart.py [--seeds 42 43 44 45 46] [--only fedavg,pooled]

Prints a table; writes benchmarks/results/flamby_heart.json.
"""

from __future__ import annotations

import argparse
import json
import re
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
from fedcore.config import TrainConfig, load_site, parse_job  # noqa: E402
from fedcore.data import SiteData, encode_site, prepare_site  # noqa: E402
from fedcore.errors import ConfigError  # noqa: E402
from fedcore.harness.baselines import local_and_pooled  # noqa: E402
from fedcore.harness.loop import run_inprocess  # noqa: E402
from fedcore.models import build_model, register_model, set_arrays  # noqa: E402
from fedcore.reporting.released import mean_metrics  # noqa: E402

APP = REPO / "examples" / "medical"
HOSPITALS = ("cleveland", "hungary", "switzerland", "va")
SEEDS = [42, 43, 44, 45, 46]
OUT = REPO / "benchmarks" / "results" / "flamby_heart.json"

# FLamby's published means and per-seed figures (heart_seed42..46.csv: mean over the 4 test sets)
PUBLISHED: dict[str, dict[str, Any]] = {
    "pooled": {"mean": 0.7353, "per_seed": [0.7391, 0.7343, 0.7367, 0.7343, 0.7319]},
    "local_cleveland": {"mean": 0.7221, "per_seed": [0.7094, 0.7327, 0.6938, 0.7483, 0.7264]},
    "local_hungary": {"mean": 0.6287, "per_seed": [0.6285, 0.6309, 0.6333, 0.6490, 0.6021]},
    "local_switzerland": {"mean": 0.5670, "per_seed": [0.6268, 0.6101, 0.4964, 0.5859, 0.5157]},
    "local_va": {"mean": 0.6366, "per_seed": [0.6747, 0.6067, 0.6552, 0.5852, 0.6614]},
    "fedavg": {"mean": 0.6850, "per_seed": [0.6915, 0.7198, 0.6427, 0.6943, 0.6765]},
    "fedprox": {"mean": 0.6850, "per_seed": [0.6915, 0.7198, 0.6427, 0.6943, 0.6765]},
    "fedyogi": {"mean": 0.7314, "per_seed": [0.7240, 0.7194, 0.7513, 0.7350, 0.7271]},
    "fedadam": {"mean": 0.7255, "per_seed": [0.7212, 0.7115, 0.7461, 0.7322, 0.7167]},
    "fedadagrad": {"mean": 0.7314, "per_seed": [0.7240, 0.7194, 0.7513, 0.7350, 0.7271]},
    "scaffold": {"mean": 0.6840, "per_seed": [0.6891, 0.7198, 0.6427, 0.6919, 0.6765]},
}
_SERVER = {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.999, "tau": 1e-8}
FEDERATED: dict[str, tuple[float, dict[str, Any]]] = {  # client SGD lr, [aggregator] (+ other sections)
    "fedavg": (0.001, {"name": "fedavg"}),
    "fedprox": (0.001, {"name": "fedprox"}),  # mu 0.01 (fedcore's FedProx default; FLamby's)
    "fedyogi": (0.003162, {"name": "fedyogi", **_SERVER}),
    "fedadam": (0.01, {"name": "fedadam", **_SERVER}),
    "fedadagrad": (0.003162, {"name": "fedadagrad", **_SERVER, "server_lr": 0.316228}),
    # SCAFFOLD is a client algorithm (fedcore.algorithms), [algorithm] name = "scaffold", on FedAvg with
    # server lr 1 (FLamby's); a tree without [algorithm] reports it "pending"
    "scaffold": (0.001, {"name": "fedavg", "algorithm": {"name": "scaffold"}}),
}

# FLamby's inputs: the 8 numeric columns in file order, then get_dummies' cp_2..4, restecg_1..2
FLAMBY_ORDER = (
    "age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak",
    "cp=2", "cp=3", "cp=4", "restecg=1", "restecg=2",
)  # fmt: skip


def site_files(tmp: Path) -> list[Path]:
    """Site files of the published protocol: the example's, without the center/scale constants (so
    every input is standardised by the hospital's own training rows), the data path made absolute."""
    out = []
    for name in HOSPITALS:
        text = (APP / "sites" / f"{name}.toml").read_text()
        text = re.sub(r",\s*(center|scale)\s*=\s*[-+0-9.eE]+", "", text)
        text = re.sub(
            r'^path = "([^"]+)"',
            lambda m: f'path = "{(APP / "sites" / m.group(1)).resolve()}"',
            text,
            flags=re.M,
        )
        path = tmp / f"{name}.toml"
        path.write_text(text)
        out.append(path)
    return out


def flamby_logreg(input_dim: int) -> torch.nn.Module:
    """``nn.Linear(13, 1)`` drawn as FLamby draws it, its weights moved to fedcore's column order."""
    layer = torch.nn.Linear(input_dim, 1)
    if input_dim != len(FLAMBY_ORDER):  # a job file's check builds it with 3 inputs
        return layer
    with torch.no_grad():
        layer.weight.copy_(layer.weight[:, [FLAMBY_ORDER.index(f) for f in FEDCORE_ORDER]])
    return layer


FEDCORE_ORDER: tuple[str, ...] = ()


def setup(tmp: Path) -> tuple[list[Path], list[SiteData]]:
    """The protocol's site files (written into ``tmp``), their data, and the model ``flamby_logreg``
    registered for fedcore's column order."""
    global FEDCORE_ORDER
    files = site_files(tmp)
    datas = [prepare_site(load_site(p)) for p in files]
    FEDCORE_ORDER = tuple(f.replace(".0", "") for f in datas[0].features)
    assert sorted(FEDCORE_ORDER) == sorted(FLAMBY_ORDER), FEDCORE_ORDER
    register_model("flamby_logreg", flamby_logreg, force=True)
    return files, datas


def _pooled_rows(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """All training rows, standardised with the pooled training rows' mean and std (FLamby's pooled set)."""
    encoded = [encode_site(load_site(p)) for p in files]
    x = np.vstack([e.x[e.train] for e in encoded])
    y = np.concatenate([e.y[e.train] for e in encoded])
    std = x.std(axis=0)
    std[std == 0] = 1.0
    return ((x - x.mean(axis=0)) / std).astype(np.float32), y


def _job(name: str, model: str) -> Any:
    lr, aggregator = FEDERATED[name]
    extra = {k: v for k, v in aggregator.items() if isinstance(v, dict)}  # e.g. [algorithm]
    table = {
        "job": {"name": f"flamby-{name}", "rounds": 15, "seed": 42, "min_sites": 4},
        "model": {"name": model},
        "train": {"local_steps": 100, "batch_size": 4, "optimizer": "sgd", "lr": lr},
        "aggregator": {k: v for k, v in aggregator.items() if k not in extra},
        **extra,
    }
    return parse_job(table, f"FLamby {name}")


def _pending(name: str) -> str | None:
    """Why a strategy cannot run in this tree (its job does not parse: e.g. no [algorithm] yet)."""
    try:
        _job(name, "logreg")
    except ConfigError as err:
        return f"pending: {err} (SCAFFOLD needs the client algorithm API, issue 24 item 1)"
    return None


def _scores(arrays: Any, model: str, datas: list[SiteData]) -> dict[str, float]:
    net = build_model({"name": model}, len(datas[0].features), seed=0)
    set_arrays(net, arrays)
    per = {d.site: evaluate_site(net, d) for d in datas}
    out = {k: v for k, v in mean_metrics(per).items()}
    out.update({f"{d.site}_accuracy": per[d.site]["accuracy"] for d in datas})
    return out


def federated(name: str, seed: int, files: list[Path], datas: list[SiteData], model: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as state:
        arrays, _ = run_inprocess(_job(name, model), files, seed=seed, state_dir=Path(state))
    return _scores(arrays, model, datas)


def baselines(seed: int, files: list[Path], datas: list[SiteData], model: str) -> dict[str, dict[str, float]]:
    cfg = TrainConfig(lr=0.001, batch_size=4, optimizer="adam")
    res = local_and_pooled(
        datas, model_spec={"name": model}, cfg=cfg, epochs=50, seed=seed, pooled_rows=_pooled_rows(files)
    )
    out = {
        "pooled": {
            k[len("pooled_") :]: v
            for k, v in res.items()
            if k.startswith("pooled_") and k != "pooled_per_site"
        }
    }
    for d in datas:
        vals = res["sites"][d.site]
        out[f"local_{d.site}"] = {
            k[len("local_only_") :]: v
            for k, v in vals.items()
            if k.startswith("local_only_") and not k.startswith("local_only_own")
        }
    for name, per in (("pooled", res["pooled_per_site"]),):
        out[name].update({f"{s}_accuracy": v["accuracy"] for s, v in per.items()})
    return out


def summarise(name: str, runs: list[dict[str, float]], seeds: list[int]) -> dict[str, Any]:
    accs = [r["accuracy"] for r in runs]
    pub = PUBLISHED[name]
    keys = sorted({k for r in runs for k in r})
    row: dict[str, Any] = {
        "per_seed": dict(zip(map(str, seeds), accs, strict=True)),
        "mean_accuracy": float(np.mean(accs)),
        "sd_over_seeds": float(np.std(accs)),
        "published_mean": pub["mean"],
        "published_per_seed": pub["per_seed"],
        "difference": float(np.mean(accs)) - pub["mean"],
        "within_0.01": bool(abs(float(np.mean(accs)) - pub["mean"]) <= 0.01),
    }
    row["means"] = {k: float(np.mean([r[k] for r in runs if k in r])) for k in keys}
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    ap.add_argument("--only", default="", help="comma-separated strategies (default: all)")
    ap.add_argument("--inits", default="flamby,fedcore")
    args = ap.parse_args()
    torch.set_num_threads(1)
    only = [s for s in args.only.split(",") if s]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files, datas = setup(Path(tmp))
        for init in args.inits.split(","):
            model = "flamby_logreg" if init == "flamby" else "logreg"
            rows: dict[str, Any] = {}
            t0 = time.perf_counter()
            if not only or any(s == "pooled" or s.startswith("local") for s in only):
                per_seed = [baselines(s, files, datas, model) for s in args.seeds]
                for name in per_seed[0]:
                    rows[name] = summarise(name, [p[name] for p in per_seed], args.seeds)
            for name in FEDERATED:
                if only and name not in only:
                    continue
                pending = _pending(name)
                if pending is not None:
                    rows[name] = {"pending": pending, "published_mean": PUBLISHED[name]["mean"]}
                    continue
                rows[name] = summarise(
                    name, [federated(name, s, files, datas, model) for s in args.seeds], args.seeds
                )
                got, published = rows[name]["mean_accuracy"], PUBLISHED[name]["mean"]
                print(f"{init:8s} {name:18s} {got:.4f} (published {published})", flush=True)
            results[init] = {"rows": rows, "seconds": time.perf_counter() - t0}
    _write(results, args.seeds, only)


def _write(results: dict[str, Any], seeds: list[int], only: list[str]) -> None:
    """Write the JSON; with ``--only`` the named rows replace theirs in the existing file."""
    if only and OUT.exists():
        old = json.loads(OUT.read_text())
        for init, res in results.items():
            old["inits"].setdefault(init, {"rows": {}})["rows"].update(res["rows"])
        old.setdefault("partial_runs", []).append({"only": only, "machine": machine(torch=torch.__version__)})
        OUT.write_text(json.dumps(old, indent=1))
        _print(old["inits"])
        return
    body = {
        "protocol": "FLamby Fed-Heart-Disease (see the module docstring of benchmarks/flamby_heart.py)",
        "seeds": seeds,
        "metric": "accuracy at 0.5, mean over the four hospitals' test sets (means also holds AUC, "
        "balanced accuracy, per-hospital accuracy)",
        "inits": results,
        "machine": machine(torch=torch.__version__),
    }
    OUT.write_text(json.dumps(body, indent=1))
    _print(results)


def _print(results: dict[str, Any]) -> None:
    print("\n| strategy | published | fedcore (FLamby's init) | diff | fedcore (own init) | diff |")
    print("|---|---|---|---|---|---|")
    names = list(next(iter(results.values()))["rows"])
    for name in names:
        cells = []
        for init in ("flamby", "fedcore"):
            row = results.get(init, {}).get("rows", {}).get(name, {})
            cells += (
                [f"{row['mean_accuracy']:.3f} ({row['sd_over_seeds']:.3f})", f"{row['difference']:+.3f}"]
                if "mean_accuracy" in row
                else ["pending", ""]
            )
        print(f"| {name} | {PUBLISHED[name]['mean']:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

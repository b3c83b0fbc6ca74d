"""Does a consortium terminal-risk statistic help every bank? AUPRC per bank, in process.

Run from the repository root::

    .venv/bin/python benchmarks/consortium.py            # 20k customers and terminals, seeds 42-43
    .venv/bin/python benchmarks/consortium.py --populations 20000:20000 50000:50000 50000:5000
    .venv/bin/python benchmarks/consortium.py --quick    # 20k customers, seed 42
    .venv/bin/python benchmarks/consortium.py --populations 20000:20000 --seeds 42-46 --dpsgd

Writes ``benchmarks/results/consortium.json``. For each population (``customers:terminals``,
``examples/finance/prepare.py::consortium_data``) and seed, on the finance example's time split
(train days 30-64, gap, test days 72-92), per bank AUPRC on its own test set of

- ``alone``: the bank's own 15 handbook features, its own model, no privacy;
- ``fed``: FedAvg on the 15 features;
- ``fed_exact``: FedAvg on the 15 features + exact consortium frauds from daily cells, windows
  1/7/30 days (the non-private consortium job);
- ``fed_cust9``: the 9 customer and transaction features only (what customer-level DP keeps);
- ``fed_cust9_exactw`` / ``fed_cust9_exactd``: those 9 + exact (unbounded, noiseless) weekly
  (7/28 days) or daily (1/7/30 days) consortium counts: the DP job's ceiling;
- ``fed_dp_m<M>_e<eps>``: the DP job's features: the 9 + weekly consortium counts from
  customer-bounded cells (``M`` fraud rows per customer) with one discrete Laplace of scale
  ``M / eps`` per cell on the sum (HE with ``he_noise_share = "split"``), trained without DP-SGD
  to separate the statistic's cost; ``fed_dpd_...`` the same with daily cells;
- with ``--dpsgd``: ``fed_dp_m<M>_e<eps>_sgd3`` and ``fed_cust9_sgd3``, trained with
  customer-level DP-SGD at epsilon 3, delta 1e-6 (``fedcore.privacy.customer_dpsgd``).

The loop is a compact FedAvg over ``fedcore.clients.trainer.train_steps`` (the job's MLP 15-16-1,
30 rounds x 200 Adam steps, batch 128, lr 0.003, pos_weight 5, weights by training rows), not
``fedcore.harness.loop.run_inprocess``: that needs site files and CSVs for every variant. ``alone`` runs
the same 6,000 Adam steps on the bank's rows. Features are standardised with each bank's own
training mean and std; consortium counts go through ``sign(x) log1p(|x|)`` first.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from _machine import machine

from fedcore.clients.trainer import TrainConfig, predict_scores, train_steps
from fedcore.datasets import FEATURES, bank_features, generate_transactions, time_split
from fedcore.datasets.consortium import (
    CONSORTIUM_FEATURES,
    consortium_columns,
    consortium_features,
    fraud_cells,
    n_periods_for,
)
from fedcore.metrics import average_precision
from fedcore.models import build_model, get_arrays, set_arrays
from fedcore.privacy.customer_dpsgd import train_steps_customer_dp
from fedcore.privacy.dpsgd import DpSgdConfig, plan_dpsgd
from fedcore.privacy.rng import seeded_source

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "consortium.json"
CUSTOMER_FEATURES = FEATURES[:9]  # tx_amount, weekend, night, 6 customer windows: within the unit
MODEL = {"name": "mlp", "hidden": [16]}
CFG = TrainConfig(lr=0.003, batch_size=128, optimizer="adam", pos_weight=5.0)
ROUNDS, STEPS = 30, 200
# customer-level DP-SGD (--dpsgd): epsilon 3, delta 1e-6 per bank for the whole job; expected
# 256 customers a step, at most 16 rows each, 30 rounds x 20 steps, Adam lr 0.02, clip 2
DPSGD = DpSgdConfig(epsilon=3.0, delta=1e-6, max_grad_norm=2.0)
DP_CFG = TrainConfig(lr=0.02, batch_size=256, optimizer="adam", pos_weight=5.0)
DP_STEPS, DP_MAX_ROWS = 20, 16
EXACT_WINDOWS = (1, 7, 30)  # days, as the handbook's own terminal windows
EXACT_FEATURES = consortium_columns(EXACT_WINDOWS, 1)


def _prepare_module() -> Any:
    spec = importlib.util.spec_from_file_location("_finance_prepare", ROOT / "examples/finance/prepare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_finance_prepare"] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Bank:
    train: pd.DataFrame
    test: pd.DataFrame


def discrete_laplace(scale: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Difference of two geometric variables: P(k) proportional to exp(-|k| / scale)."""
    p = 1.0 - np.exp(-1.0 / scale)
    return rng.geometric(p, size) - rng.geometric(p, size)


def population(
    customers: int, seed: int, eps_list: list[float], max_per_customer: list[int], terminals: int | None
) -> dict[str, Any]:
    """Per bank featured rows (with exact and DP consortium columns), split in time."""
    prep = _prepare_module()
    data = prep.with_seed(seed, prep.consortium_data(customers, terminals))
    gen = data.generator
    start = time.perf_counter()
    frame = generate_transactions(gen)
    gen_s = time.perf_counter() - start
    start = time.perf_counter()
    banks = {int(b): bank_features(rows) for b, rows in frame.groupby("bank", sort=True)}
    grid = {"n_terminals": gen.n_terminals, "n_periods": n_periods_for(gen.n_days)}
    daily = {"n_terminals": gen.n_terminals, "n_periods": gen.n_days, "period_days": 1}
    rng = np.random.default_rng([seed, 7])  # simulation only; the real release uses a secure source
    cells = {"exactw": sum(fraud_cells(df, **grid) for df in banks.values())}
    cells_daily = {"exact": sum(fraud_cells(df, **daily) for df in banks.values())}
    kept = {}
    for m in max_per_customer:
        bounded_daily = sum(fraud_cells(df, **daily, max_per_customer=m, rng=rng) for df in banks.values())
        for eps in eps_list:
            noise = discrete_laplace(m / eps, len(bounded_daily), rng)
            cells_daily[f"dpd_m{m}_e{eps:g}"] = bounded_daily + noise
        bounded = sum(fraud_cells(df, **grid, max_per_customer=m, rng=rng) for df in banks.values())
        kept[m] = round(float(bounded.sum() / cells["exactw"].sum()), 4)
        for eps in eps_list:
            cells[f"dp_m{m}_e{eps:g}"] = bounded + discrete_laplace(m / eps, len(bounded), rng)
    out = {}
    for b, df in banks.items():
        for name, vec in cells.items():
            cols = consortium_features(df, vec, **grid_of(grid))[list(CONSORTIUM_FEATURES)]
            df = df.join(cols.add_prefix(f"{name}:"))
        for name, vec in cells_daily.items():
            cols = consortium_features(df, vec, **grid_of(daily), windows=EXACT_WINDOWS)
            df = df.join(cols[list(EXACT_FEATURES)].add_prefix(f"{name}:"))
        train, test = time_split(
            df,
            train_days=data.train_days,
            delay_days=data.delay_days,
            test_days=data.test_days,
            start_day=data.start_day,
        )
        out[b] = Bank(train, test)
    feat_s = time.perf_counter() - start
    return {
        "banks": out,
        "rows": len(frame),
        "generate_s": gen_s,
        "features_s": feat_s,
        "bounded_share": kept,
    }


def grid_of(grid: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in grid.items() if k != "n_terminals"}


def arrays(bank: Bank, cols: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def raw(df: pd.DataFrame) -> np.ndarray:
        x = df[cols].to_numpy(np.float64)
        counts = np.array([":" in c for c in cols])
        x[:, counts] = np.sign(x[:, counts]) * np.log1p(np.abs(x[:, counts]))
        return x

    xtr, xte = raw(bank.train), raw(bank.test)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
    f32 = np.float32
    return (
        ((xtr - mu) / sd).astype(f32),
        bank.train["fraud"].to_numpy(f32),
        ((xte - mu) / sd).astype(f32),
        bank.test["fraud"].to_numpy(f32),
    )


def alone(data: list[tuple[np.ndarray, ...]], seed: int) -> list[float]:
    scores = []
    for xtr, ytr, xte, yte in data:
        model = build_model(MODEL, xtr.shape[1], seed=seed)
        train_steps(model, xtr, ytr, CFG, steps=ROUNDS * STEPS, seed=seed)
        scores.append(average_precision(yte, predict_scores(model, xte)))
    return scores


def fedavg(data: list[tuple[np.ndarray, ...]], seed: int) -> list[float]:
    model = build_model(MODEL, data[0][0].shape[1], seed=seed)
    g = get_arrays(model)
    weights = np.array([len(d[1]) for d in data], dtype=np.float64)
    for r in range(ROUNDS):
        new = []
        for i, (xtr, ytr, _, _) in enumerate(data):
            set_arrays(model, g)
            train_steps(model, xtr, ytr, CFG, steps=STEPS, seed=seed * 1000 + r * 10 + i)
            new.append(get_arrays(model))
        g = tuple(
            sum(w * a[k] for w, a in zip(weights / weights.sum(), new, strict=True)) for k in range(len(g))
        )
    set_arrays(model, g)
    return [average_precision(yte, predict_scores(model, xte)) for _, _, xte, yte in data]


def fedavg_customer_dp(data: list[tuple[np.ndarray, ...]], units: list[np.ndarray], seed: int) -> list[float]:
    """FedAvg where every bank trains with customer-level DP-SGD (simulation: a seeded source)."""
    model = build_model(MODEL, data[0][0].shape[1], seed=seed)
    g = get_arrays(model)
    codes = [np.unique(u, return_inverse=True)[1].astype(np.int64) for u in units]
    plans = [
        plan_dpsgd(
            DPSGD,
            num_examples=int(c.max()) + 1,
            batch_size=DP_CFG.batch_size,
            rounds=ROUNDS,
            local_steps=DP_STEPS,
        )
        for c in codes
    ]
    weights = np.array([len(d[1]) for d in data], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PrivacyWarning: a seeded source, acceptable in a simulation
        source = seeded_source(seed)
    for _ in range(ROUNDS):
        new = []
        for (xtr, ytr, _, _), c, plan in zip(data, codes, plans, strict=True):
            set_arrays(model, g)
            train_steps_customer_dp(
                model, xtr, ytr, c, DP_CFG, plan=plan, max_rows=DP_MAX_ROWS, steps=DP_STEPS, source=source
            )
            new.append(get_arrays(model))
        g = tuple(
            sum(w * a[k] for w, a in zip(weights / weights.sum(), new, strict=True)) for k in range(len(g))
        )
    set_arrays(model, g)
    return [average_precision(yte, predict_scores(model, xte)) for _, _, xte, yte in data]


def run_one(
    customers: int,
    terminals: int,
    seed: int,
    eps_list: list[float],
    max_per_customer: list[int],
    variants: list[str] | None = None,
    dpsgd: bool = False,
) -> dict[str, Any]:
    pop = population(customers, seed, eps_list, max_per_customer, terminals)
    banks = [pop["banks"][b] for b in sorted(pop["banks"])]
    hand = list(FEATURES)
    res: dict[str, Any] = {
        "customers": customers,
        "terminals": terminals,
        "seed": seed,
        "rows": pop["rows"],
        "generate_s": round(pop["generate_s"], 2),
        "features_s": round(pop["features_s"], 2),
        "bounded_share_of_frauds": pop["bounded_share"],
        "train_rows": [len(b.train) for b in banks],
        "train_frauds": [int(b.train["fraud"].sum()) for b in banks],
        "test_frauds": [int(b.test["fraud"].sum()) for b in banks],
        "auprc": {},
    }
    cust = list(CUSTOMER_FEATURES)
    plan = {
        "fed": hand,
        "fed_exact": hand + [f"exact:{c}" for c in EXACT_FEATURES],
        "fed_cust9": cust,
        "fed_cust9_exactw": cust + [f"exactw:{c}" for c in CONSORTIUM_FEATURES],
        "fed_cust9_exactd": cust + [f"exact:{c}" for c in EXACT_FEATURES],
        **{
            f"fed_dpd_m{m}_e{eps:g}": cust + [f"dpd_m{m}_e{eps:g}:{c}" for c in EXACT_FEATURES]
            for m in max_per_customer
            for eps in eps_list
        },
        **{
            f"fed_dp_m{m}_e{eps:g}": cust + [f"dp_m{m}_e{eps:g}:{c}" for c in CONSORTIUM_FEATURES]
            for m in max_per_customer
            for eps in eps_list
        },
    }
    start = time.perf_counter()
    res["auprc"]["alone"] = alone([arrays(b, hand) for b in banks], seed)
    for name, cols in plan.items():
        if variants is None or name in variants:
            res["auprc"][name] = fedavg([arrays(b, cols) for b in banks], seed)
    if dpsgd:
        m, eps = max_per_customer[0], max(eps_list)
        cols = plan[f"fed_dp_m{m}_e{eps:g}"]
        units = [b.train["customer_id"].to_numpy() for b in banks]
        res["auprc"][f"fed_dp_m{m}_e{eps:g}_sgd3"] = fedavg_customer_dp(
            [arrays(b, cols) for b in banks], units, seed
        )
        res["auprc"]["fed_cust9_sgd3"] = fedavg_customer_dp([arrays(b, cust) for b in banks], units, seed)
    res["train_s"] = round(time.perf_counter() - start, 1)
    return res


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for pop in dict.fromkeys((r["customers"], r["terminals"]) for r in results):
        rs = [r for r in results if (r["customers"], r["terminals"]) == pop]
        seeds = [r["seed"] for r in rs]
        lines.append(f"\n{pop[0]} customers, {pop[1]} terminals, seeds {seeds}: mean AUPRC (own test set)")
        names = list(rs[0]["auprc"])
        lines.append(
            f"{'variant':<16}" + "".join(f"{'bank_' + str(b):>9}" for b in range(5)) + f"{'min-alone':>11}"
        )
        base = np.mean([r["auprc"]["alone"] for r in rs], axis=0)
        for name in names:
            m = np.mean([r["auprc"][name] for r in rs], axis=0)
            lines.append(f"{name:<16}" + "".join(f"{v:9.3f}" for v in m) + f"{(m - base).min():+11.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--populations",
        nargs="+",
        default=["20000:20000"],
        help="customers:terminals pairs",
    )
    parser.add_argument("--seeds", default="42-43", help="first-last or a comma list")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--variants", nargs="+", default=None, help="only these variants (and alone)")
    parser.add_argument("--max-per-customer", type=int, nargs="+", default=[1])
    parser.add_argument("--dpsgd", action="store_true", help="also customer-level DP-SGD at epsilon 3")
    parser.add_argument("--quick", action="store_true", help="20k customers and terminals, seed 42")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.populations, args.seeds = ["20000:20000"], "42"
    lo, _, hi = args.seeds.partition("-")
    seeds = list(range(int(lo), int(hi) + 1)) if hi else [int(s) for s in lo.split(",")]
    torch.set_num_threads(1)
    results = []
    for pair in args.populations:
        customers, terminals = (int(v) for v in pair.split(":"))
        for seed in seeds:
            results.append(
                run_one(
                    customers, terminals, seed, args.eps, args.max_per_customer, args.variants, args.dpsgd
                )
            )
            print(json.dumps({k: v for k, v in results[-1].items() if k != "auprc"}), flush=True)
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"max_per_customer": args.max_per_customer, "eps": args.eps, "rounds": ROUNDS, "steps": STEPS}
    args.out.write_text(
        json.dumps({"machine": machine(torch=torch.__version__), **meta, "runs": results}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()

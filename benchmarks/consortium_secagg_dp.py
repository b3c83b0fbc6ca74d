"""The consortium statistic under secure aggregation with distributed DP: what it charges, how noisy.

Run from the repository root::

    .venv/bin/python benchmarks/consortium_secagg_dp.py

Runs the real batch of ``examples/finance/jobs/consortium_secagg_dp.toml`` through Flower's
simulation (``run_statistics_app``: five banks, ``queries/consortium_secagg_dp.toml``, 280,000 cells,
each bank adding its own discrete Gaussian noise before SecAgg+ masks its vector), on the job's data
(seed 42, ``data/consortium-secagg-dp/`` before the release), and compares the released noisy sums
with the exact ones computed here from every bank's rows: all confirmed frauds per cell (what
``consortium_secagg`` releases) and, for the noise alone, the sum's deviation against the summed
noise's stated std. Records the epsilon each bank's own plan charged (``trust = "own"``) and what
the same noise would charge a bank trusting the threshold (its plan, computed here). Writes
``benchmarks/results/consortium_secagg_dp.json``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _machine import machine

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "finance"
QUERY = APP / "queries" / "consortium_secagg_dp.toml"
SITES = APP / "sites-consortium-secagg-dp"
RESULTS = ROOT / "benchmarks" / "results" / "consortium_secagg_dp.json"


def _exact(files: list[Path], cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: every bank's confirmed frauds, and one fraud per customer (in the cell of its first
    fraud row: the query keeps one random fraud row per customer, so only the total is comparable)."""
    frames = [pd.read_csv(f) for f in files]
    frauds = pd.concat([f[f["fraud"] == 1] for f in frames])
    cell = frauds["consortium_cell"].to_numpy(dtype=np.int64)
    per_customer = frauds.drop_duplicates(["bank", "customer_id"])["consortium_cell"].to_numpy(dtype=np.int64)
    return np.bincount(cell, minlength=cells), np.bincount(per_customer, minlength=cells)


def _threshold_epsilon(site_file: Path, request: Any) -> float:
    from fedcore.analytics.noisy import plan_noisy
    from fedcore.config import load_site

    site = load_site(site_file)
    assert site.secagg is not None
    return plan_noisy(request, replace(site, secagg=replace(site.secagg, trust="threshold"))).epsilon


def measure() -> dict[str, Any]:
    from fedcore.analytics.query import QueryRequest, load_queries
    from fedcore.analytics.released import released_histogram
    from fedcore.harness.app import load_app, run_prepare
    from fedcore.harness.statistics import run_statistics_app

    run_prepare(load_app(APP), 42, data="consortium_secagg_dp")
    files = sorted(SITES.glob("*.toml"))
    out = Path(tempfile.mkdtemp(prefix="consortium-secagg-dp-")) / "out"  # kept: statistics.json
    t0 = time.perf_counter()
    body = run_statistics_app(
        APP, QUERY, out_dir=out, curves=False, site_files=files, prepared=True, references=False
    )
    wall = time.perf_counter() - t0
    noisy = released_histogram(out / "statistics.json", "consortium frauds")
    data = sorted((APP / "data" / "consortium-secagg-dp").glob("bank_*.csv"))
    exact, once = _exact(data, noisy.size)
    err = noisy - exact
    std = float(body["noise"]["summed_std"])
    request = QueryRequest("threshold", len(files), load_queries(QUERY))
    return {
        "cells": int(noisy.size),
        "wall_s": round(wall, 1),
        "noise": body["noise"],
        "survivors": body["survivors"],
        "epsilon_charged_own": body["noise"]["epsilon_charged"],
        "epsilon_if_threshold": round(_threshold_epsilon(files[0], request), 4),
        "exact_frauds": int(exact.sum()),
        "frauds_once_per_customer": int(once.sum()),
        "cells_with_frauds": int((exact > 0).sum()),
        "mae_per_cell": round(float(np.abs(err).mean()), 4),
        "rmse_per_cell": round(float(np.sqrt((err**2).mean())), 4),
        "mean_error": round(float(err.mean()), 4),
        "share_cells_exact": round(float((err == 0).mean()), 4),
        "mae_cells_with_frauds": round(float(np.abs(err[exact > 0]).mean()), 4),
        "noise_only_mae_expected": round(std * math.sqrt(2 / math.pi), 4),
        "noisy_total_minus_exact": round(float(noisy.sum() - exact.sum()), 1),
    }


def main() -> None:
    os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="flwr-home-"))
    run = measure()
    body = {"machine": machine(), "sites": 5, "seed": 42, "query": str(QUERY.relative_to(ROOT)), **run}
    RESULTS.write_text(json.dumps(body, indent=1) + "\n")
    print("| epsilon per bank (own) | if threshold | summed std | MAE/cell | cells exact | wall s |")
    print("|---:|---:|---:|---:|---:|---:|")
    eps = max(run["epsilon_charged_own"].values())
    print(f"| {eps:.4g} | {run['epsilon_if_threshold']:.4g} | {run['noise']['summed_std']:.4g} | "
          f"{run['mae_per_cell']} | {run['share_cells_exact']} | {run['wall_s']} |")  # fmt: skip


if __name__ == "__main__":
    main()

"""Time the transaction simulator and the per-bank features; print a table, write JSON.

Run from the repository root::

    .venv/bin/python benchmarks/generator.py

Writes ``benchmarks/results/generator.json``. The target is one million transactions in under a
minute on a 2-core machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _machine import machine

from fedcore.datasets import GeneratorConfig, features_by_bank, generate_transactions

REPEATS = 3
RESULTS = Path(__file__).resolve().parent / "results" / "generator.json"

CASES = {
    "small (tests)": GeneratorConfig.small(seed=0),
    "1M (105 days)": GeneratorConfig(n_days=105, seed=0),
    "handbook default": GeneratorConfig(seed=0),
}


def measure(name: str, config: GeneratorConfig) -> dict[str, Any]:
    """Best of ``REPEATS`` generations (the machine is shared), then every bank's features once."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        df = generate_transactions(config)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    start = time.perf_counter()
    features_by_bank(df)
    features_seconds = time.perf_counter() - start
    share = df["fraud_scenario"].value_counts(normalize=True)
    return {
        "case": name,
        "config": dict(config.__dict__),
        "rows": len(df),
        "seconds": round(seconds, 3),
        "seconds_all_repeats": [round(t, 3) for t in times],
        "rows_per_second": round(len(df) / seconds),
        "features_seconds": round(features_seconds, 3),
        "fraud_rate": round(float(df["fraud"].mean()), 5),
        "scenario_rate": {str(s): round(float(share.get(s, 0.0)), 5) for s in (1, 2, 3)},
        "scenario_count": {str(s): int((df["fraud_scenario"] == s).sum()) for s in (1, 2, 3)},
    }


def main() -> None:
    generate_transactions(GeneratorConfig.small(seed=1))  # warm-up: imports, allocator
    rows = [measure(name, config) for name, config in CASES.items()]
    print(f"{'case':<18}{'rows':>11}{'gen s':>8}{'feat s':>8}{'fraud':>8}{'sc1':>9}{'sc2':>9}{'sc3':>9}")
    for r in rows:
        rate = r["scenario_rate"]
        print(
            f"{r['case']:<18}{r['rows']:>11,}{r['seconds']:>8.2f}{r['features_seconds']:>8.2f}"
            f"{r['fraud_rate']:>8.2%}{rate['1']:>9.3%}{rate['2']:>9.3%}{rate['3']:>9.3%}"
        )
    about = machine(numpy=np.__version__, pandas=pd.__version__)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": about, "results": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

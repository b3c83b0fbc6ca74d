"""docs/benchmarks.md, "Robustness": the sentences under the tables hold for
benchmarks/results/robustness.json (a doc claim is a test)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = json.loads(
    (Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "robustness.json").read_text()
)["results"]


def _worst(result: dict[str, Any], agg: str) -> float:
    m = result["metrics"][-1]
    return max(c[f"drop_{m}"] for a, c in result["cells"][agg].items() if a != "none")


def test_heart_only_the_geometric_median_holds_every_drop_within_0_021() -> None:
    heart = RESULTS["heart"]
    held = [agg for agg in heart["cells"] if _worst(heart, agg) <= 0.021]
    assert held == ["geometric_median"]
    assert {"krum", "multikrum", "bulyan"} <= set(heart["refused"])


def test_finance_nnm_trmean_and_multikrum_hold_every_drop_to_0_020() -> None:
    finance = RESULTS["finance"]
    for agg in ("nnm+trmean", "multikrum"):
        assert _worst(finance, agg) <= 0.020 + 1e-9, agg
    assert _worst(finance, "fedavg") > 0.25  # Gaussian noise: 0.300
    clean = {agg: cells["none"]["auprc"] for agg, cells in finance["cells"].items()}
    assert clean["fedavg"] - clean["fedavg+clipping"] > 0.15  # adaptive clipping's cost, no attack


def test_under_dp_every_rule_loses_at_least_0_05_and_every_hospital_paid_under_1() -> None:
    dp = RESULTS["heart_dp"]
    for agg, cells in dp["cells"].items():
        assert 0.05 <= max(cells[a]["drop_auc"] for a in ("sign_flip", "label_flip")) <= 0.14, agg
        assert 0.99 <= cells["none"]["epsilon"] <= 1.0, agg

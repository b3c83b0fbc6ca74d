"""benchmarks/dp_overhead.py --quick runs and writes every key the docs quote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_dp_overhead_quick_writes_the_keys(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dp_overhead.py"), "--quick", "--out", str(tmp_path)],
        check=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        capture_output=True,
    )
    data = json.loads((tmp_path / "dp_overhead.json").read_text())
    assert data["meta"]["torch_threads"] == 1 and len(data["meta"]["loadavg_start"]) == 3
    assert "cpus" in data["meta"]["machine"]
    models = {r["model"]: r for r in data["results"]}
    assert set(models) == {"logreg", "mlp-64-32", "mlp-256-256", "cnn"}
    assert models["cnn"]["backend"] == "ghost" and models["logreg"]["backend"] == "linear"
    for r in models.values():
        assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        assert len(r["paired_ratios"]) == data["meta"]["repeats"]
        assert r["fair_plain"] in r["median_epoch_s"]
    assert models["mlp-64-32"]["fair_plain"] in ("plain-manual", "plain-autograd")
    noise = data["noise"]
    assert noise["keystream_mb_s"] > 0
    assert 0 < noise["normals_vs_keystream_limit_float32"] < 1
    assert 0 < noise["normals_vs_keystream_limit_float64"] < 1

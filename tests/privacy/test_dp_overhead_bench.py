"""benchmarks/dp_overhead.py and benchmarks/fused_noise.py --quick run and write every key the
docs quote; the fused prototype kernel draws N(0, 1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]


def _quick(script: str, out: Path) -> Any:
    """Run ``benchmarks/SCRIPT.py --quick`` into ``out`` and return its JSON."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--quick", "--out", str(out)],
        check=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        capture_output=True,
    )
    return json.loads((out / f"{script}.json").read_text())


@pytest.mark.slow
@pytest.mark.long
def test_dp_overhead_quick_writes_the_keys(tmp_path: Path) -> None:
    data = _quick("dp_overhead", tmp_path)
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


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.skipif(shutil.which("gcc") is None, reason="the prototype is compiled with gcc")
def test_fused_noise_quick_writes_the_keys_and_draws_normals(tmp_path: Path) -> None:
    data = _quick("fused_noise", tmp_path)
    sampler = data["sampler"]
    for key in ("numpy", "fused"):
        assert 0 < sampler[f"{key}_vs_keystream_limit"] < 1
        d = data["distribution"][key]
        # 1M values: the mean's sd is 0.001, the variance's 0.0014, the kurtosis' 0.005
        assert abs(d["mean"]) < 0.006 and abs(d["var"] - 1) < 0.008 and abs(d["kurtosis"] - 3) < 0.03
        assert d["ks_pvalue"] > 1e-4
    epoch = data["mlp_256_256"]
    for key in ("dp-numpy-sampler", "dp-fused-sampler"):
        assert epoch[key]["ratio_min"] <= epoch[key]["ratio"] <= epoch[key]["ratio_max"]

"""benchmarks/fused_noise.py --quick builds the prototype kernel, and the kernel draws N(0, 1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None, reason="the prototype is compiled with gcc")
def test_fused_noise_quick_writes_the_keys_and_draws_normals(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fused_noise.py"), "--quick", "--out", str(tmp_path)],
        check=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        capture_output=True,
    )
    data = json.loads((tmp_path / "fused_noise.json").read_text())
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

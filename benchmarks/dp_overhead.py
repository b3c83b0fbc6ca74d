"""Wall-clock overhead of sample-level DP-SGD over plain local training, per backend.

One epoch (ceil(n / batch) optimizer steps) of: the medical model (logreg 13 -> 1, batch 4, the four
hospitals' pooled training rows) and the finance model (MLP 15 -> [64, 32] -> 1, batch 256, 100k
synthetic rows). Plain ``train_steps`` and every DP-SGD backend run alternately, ``REPEATS`` times;
medians are reported. DP runs draw sampling and noise from the production CSPRNG
(``fedcore.privacy.rng.secure_source``). Noise calibration is a one-off before training and is
timed separately.

Run: ``.venv/bin/python benchmarks/dp_overhead.py`` (writes ``benchmarks/results/dp_overhead.json``).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcore.clients.trainer import TrainConfig, train_steps
from fedcore.config import load_site
from fedcore.data import prepare_site
from fedcore.models import build_model
from fedcore.privacy.dpsgd import DpSgdConfig, plan_dpsgd, train_steps_dp

REPEATS = 7
BACKENDS = ("linear", "opacus-hooks", "opacus-functorch", "opacus-ew")
SITES = ("cleveland", "hungary", "switzerland", "va")
OUT = Path(__file__).parent / "results" / "dp_overhead.json"


def medical() -> tuple[np.ndarray, np.ndarray]:
    parts = [prepare_site(load_site(f"examples/medical/sites/{s}.toml")) for s in SITES]
    return np.concatenate([p.x_train for p in parts]), np.concatenate([p.y_train for p in parts])


def finance(n: int = 100_000, d: int = 15) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ rng.normal(size=d) + rng.normal(size=n) > 2.0).astype(np.float32)
    return x, y


def bench(name: str, spec: dict[str, Any], x: np.ndarray, y: np.ndarray, batch: int) -> dict[str, Any]:
    cfg = TrainConfig(lr=0.05, batch_size=batch)
    steps = -(-len(x) // batch)
    t0 = time.perf_counter()
    plan = plan_dpsgd(
        DpSgdConfig(epsilon=1.0, delta=1e-5, max_grad_norm=1.0),
        num_examples=len(x),
        batch_size=batch,
        rounds=1,
        local_steps=steps,
    )
    calib = time.perf_counter() - t0
    runs: dict[str, list[float]] = {"plain": [], **{b: [] for b in BACKENDS}}
    for r in range(REPEATS + 1):  # first pass is warm-up
        for key in runs:
            model = build_model(spec, x.shape[1], seed=0)
            t = time.perf_counter()
            if key == "plain":
                train_steps(model, x, y, cfg, steps=steps, seed=r)
            else:
                train_steps_dp(model, x, y, cfg, plan=plan, steps=steps, backend=key)  # type: ignore[arg-type]
            if r:
                runs[key].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratios = {b: med[b] / med["plain"] for b in BACKENDS}
    best = min(ratios, key=ratios.__getitem__)
    return {
        "model": name,
        "spec": spec,
        "rows": len(x),
        "batch_size": batch,
        "steps_per_epoch": steps,
        "noise_multiplier": plan.noise_multiplier,
        "calibration_s": calib,
        "median_epoch_s": med,
        "ratios": ratios,
        "mode": best,
        "ratio": ratios[best],
        "auto_mode": "linear",
        "auto_ratio": ratios["linear"],
    }


def main() -> None:
    torch.set_num_threads(1)
    xm, ym = medical()
    xf, yf = finance()
    results = [
        bench("medical-logreg", {"name": "logreg"}, xm, ym, 4),
        bench("finance-mlp", {"name": "mlp", "hidden": [64, 32]}, xf, yf, 256),
    ]
    print(f"{'model':16} {'plain s':>8} " + " ".join(f"{b:>17}" for b in BACKENDS) + "  (x plain)")
    for r in results:
        cells = " ".join(f"{r['median_epoch_s'][b]:8.3f} ({r['ratios'][b]:5.2f}x)" for b in BACKENDS)
        print(f"{r['model']:16} {r['median_epoch_s']['plain']:8.3f} {cells}")
    meta = {
        "repeats": REPEATS,
        "torch_threads": 1,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "target_ratio": 1.5,
        "secure": True,
        "secure_source": "AES-256-CTR keystream keyed from os.urandom; Box-Muller, 4-draw sum",
    }
    OUT.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

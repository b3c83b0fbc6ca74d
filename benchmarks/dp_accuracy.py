"""Four-hospital accuracy and membership-inference AUC at several DP-SGD epsilons.

Runs the medical `dp` job's protocol (FedYogi, 15 rounds x 100 local steps, batch 4, clip 1.1,
delta 1e-5) through the site runtime (the same code the Flower ClientApp calls) for each epsilon
and seed, with secure noise. Prints a table; writes benchmarks/results/dp_accuracy.json.

    python benchmarks/dp_accuracy.py [--seeds 42 43 44 45 46]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedcore.config import load_job, parse_job  # noqa: E402
from fedcore.harness.baselines import membership_attack  # noqa: E402
from tests.fl_loop import run_loop_model  # noqa: E402

APP = REPO / "examples" / "medical"
SITES = [APP / "sites" / f"{n}.toml" for n in ("cleveland", "hungary", "switzerland", "va")]
EPSILONS: list[float | None] = [0.5, 1.0, 3.0, 7.0, None]  # 8 + the noisy size exceeds the sites' cap of 8


def one(epsilon: float | None, seed: int) -> tuple[float, float]:
    sets = [f"privacy.dpsgd.epsilon={epsilon}"] if epsilon is not None else []
    job = load_job(APP / "jobs" / "dp.toml", sets)
    if epsilon is None:
        job = parse_job({k: v for k, v in job.table.items() if k != "privacy"}, "dp.toml without [privacy]")
    with tempfile.TemporaryDirectory() as state:
        acc, model, sites = run_loop_model(job, SITES, seed=seed, state_dir=Path(state))
        mia = membership_attack(list(model), [s.data for s in sites], model_spec=job.model.as_table())
    return acc, float(np.mean(list(mia.values())))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    args = ap.parse_args()
    rows = []
    for eps in EPSILONS:
        runs = [one(eps, s) for s in args.seeds]
        rows.append(
            {
                "epsilon": eps,
                "seeds": args.seeds,
                "mean_accuracy": float(np.mean([r[0] for r in runs])),
                "std_accuracy": float(np.std([r[0] for r in runs])),
                "membership_attack_auc": float(np.mean([r[1] for r in runs])),
            }
        )
        r = rows[-1]
        label = "no DP" if eps is None else f"{eps:g}"
        print(
            f"epsilon {label:>6}: accuracy {r['mean_accuracy']:.3f} +- {r['std_accuracy']:.3f}, "
            f"MIA AUC {r['membership_attack_auc']:.3f}",
            flush=True,
        )
    out = REPO / "benchmarks" / "results" / "dp_accuracy.json"
    out.write_text(json.dumps({"delta": 1e-5, "rows": rows}, indent=2))
    print("\n| epsilon | mean accuracy | std | membership-attack AUC |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {'no DP' if r['epsilon'] is None else r['epsilon']} | {r['mean_accuracy']:.3f} | "
            f"{r['std_accuracy']:.3f} | {r['membership_attack_auc']:.3f} |"
        )


if __name__ == "__main__":
    main()

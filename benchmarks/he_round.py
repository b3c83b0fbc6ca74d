"""HE round time over plaintext round time for the finance model with 10 sites, through Flower.

Builds a temporary copy of examples/finance with 10 banks (same generator, n_banks=10), then runs
the `default` job and the same job with `[privacy.he] enabled = true` in the Flower simulation
engine, alternating, and compares the median seconds per round (train + evaluate, rounds 2..N;
round 1 also starts the Ray workers). Writes benchmarks/results/he_round.json (key `round_ratio`).

    python benchmarks/he_round.py [--rounds 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FINANCE = REPO / "examples" / "finance"
N_BANKS = 10
MODEL_HIDDEN = "[32, 16]"  # pinned: the figures in results/he_round.json are for this 1,057-parameter MLP


def _make_app(root: Path) -> Path:
    app = root / "finance10"
    shutil.copytree(FINANCE, app, ignore=shutil.ignore_patterns("data", "__pycache__", "german"))
    spec = importlib.util.spec_from_file_location("finance_prepare", app / "prepare.py")
    assert spec is not None and spec.loader is not None
    prep = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = prep
    spec.loader.exec_module(prep)
    gen = dataclasses.replace(prep.CONFIG.generator, n_banks=N_BANKS)
    prep.write_banks(app / "data", dataclasses.replace(prep.CONFIG, generator=gen))
    template = (app / "sites" / "bank_0.toml").read_text()
    for b in range(N_BANKS):
        text = template.replace('name = "bank_0"', f'name = "bank_{b}"')
        text = text.replace("bank_0.csv", f"bank_{b}.csv")
        (app / "sites" / f"bank_{b}.toml").write_text(text)
    pyproject = (app / "pyproject.toml").read_text()
    sites = ",".join(f"sites/bank_{b}.toml" for b in range(N_BANKS))
    lines = [f'sites = "{sites}"' if ln.startswith("sites =") else ln for ln in pyproject.splitlines()]
    text = "\n".join(ln for ln in lines if not ln.startswith("prepare ="))
    (app / "pyproject.toml").write_text(text + "\n")
    return app


def _seconds_per_round(app: Path, out: Path, *, he: bool, rounds: int) -> float:
    from fedcore.runner import run_app

    sets = [f"job.min_sites={N_BANKS}", f"model.hidden={MODEL_HIDDEN}"]
    sets += ["privacy.he.enabled=true"] if he else []
    run_app(app, job="default", out_dir=out, rounds=rounds, sets=sets, baselines=False)
    metrics = json.loads((out / "metrics.json").read_text())
    return statistics.median(r["seconds"] for r in metrics["rounds"][1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    plain: list[float] = []
    enc: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        app = _make_app(Path(tmp))
        for i in range(args.repeats):
            order = [False, True] if i % 2 == 0 else [True, False]
            for he in order:
                secs = _seconds_per_round(app, Path(tmp) / f"run-{i}-{he}", he=he, rounds=args.rounds)
                (enc if he else plain).append(secs)
                print(f"repeat {i} {'HE' if he else 'plaintext'}: {secs:.3f} s/round", flush=True)
    result = {
        "model": "finance MLP 15-32-16-1 (1,057 parameters)",
        "sites": N_BANKS,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "plaintext_seconds_per_round": statistics.median(plain),
        "he_seconds_per_round": statistics.median(enc),
        "round_ratio": statistics.median(enc) / statistics.median(plain),
        "definition": "median over repeats of the median seconds per round (rounds 2..N, train + evaluate, "
        "Flower simulation, 1 CPU per site on this machine), HE job over the same job in plaintext",
        "runs": {"plaintext": plain, "he": enc},
    }
    out = REPO / "benchmarks" / "results" / "he_round.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\n| | s/round |\n|---|---|\n| plaintext | {result['plaintext_seconds_per_round']:.3f} |")
    print(f"| HE | {result['he_seconds_per_round']:.3f} |\n| ratio | {result['round_ratio']:.3f} |")


if __name__ == "__main__":
    main()

"""The per-bank report of the finance consortium jobs (issue 12), from their run directories.

Run the two jobs with the same seed(s), then::

    .venv/bin/fedcore run examples/finance --job consortium --out runs/cons
    .venv/bin/fedcore run examples/finance --job consortium_dp_he --out runs/cons-dp
    .venv/bin/python benchmarks/consortium_report.py runs/cons --dp runs/cons-dp

(several seeds: one run of each job per seed, ``runs/cons-42 runs/cons-43 --dp runs/dp-42 --dp runs/dp-43``;
the table is the mean over them.)

Reads each run's ``summary.json`` (a ``--seeds`` run's mean works the same) and prints one row per
bank: each bank alone (its 15 own features, no privacy: the ``consortium`` run's
``local_only_own_auprc``, trained without the consortium columns by ``[baselines] drop``), alone
under the same customer-level DP-SGD (the DP run's ``local_only_dp_own_auprc``), the federation
with the exact consortium feature and no privacy, the federation with the DP consortium feature,
customer-level DP-SGD and HE, all rows pooled (15 features), and what each bank's ledger holds
(statistic + training, composed). The federation *without* the consortium feature is not one of
these jobs: the ``fed`` column of ``benchmarks/results/consortium_5seeds.json`` (in process, the
same seeds) stands beside it, marked. Checks the bars: exact consortium - alone >= 0.03 for
every bank; DP federation > every bank's non-private alone model. ``--json PATH`` writes the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine

ROOT = Path(__file__).resolve().parents[1]
IN_PROCESS = ROOT / "benchmarks" / "results" / "consortium_5seeds.json"
BAR = 0.03


def _summary(run: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((Path(run) / "summary.json").read_text())
    if "failed" in body:
        raise SystemExit(f"{run}: the run failed: {body['failed']}")
    return body


def _in_process(seeds: list[int]) -> list[float] | None:
    """The in-process FedAvg on the 15 features (no consortium) per bank, mean over ``seeds``."""
    if not IN_PROCESS.is_file():
        return None
    runs = json.loads(IN_PROCESS.read_text())["runs"]
    per_seed = [r["auprc"]["fed"] for r in runs if r["seed"] in seeds]
    return [float(v) for v in np.mean(per_seed, axis=0)] if per_seed else None


def rows(exact: dict[str, Any], dp: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per bank: the figures of both runs and the epsilon each bank's ledger holds
    (``dp`` None: the private job was not run; its columns are None)."""
    fed_plain = _in_process(list(exact.get("seeds") or [exact.get("seed")]))
    out = []
    for b, name in enumerate(sorted(exact["sites"])):
        e = exact["sites"][name]
        d = {} if dp is None else dp["sites"][name]
        priv = {} if dp is None else dp["privacy"]["sites"][name]
        train = next((r["epsilon"] for r in priv.get("releases", []) if r["what"] == "model updates"), None)
        out.append(
            {
                "bank": name,
                "alone": e.get("local_only_own_auprc"),
                "alone_dp": d.get("local_only_dp_own_auprc"),
                "fed_no_consortium_in_process": None if fed_plain is None else fed_plain[b],
                "fed_exact_consortium": e["auprc"],
                "fed_dp_consortium_dpsgd_he": d.get("auprc"),
                "pooled": e.get("pooled_own_auprc"),
                "epsilon_statistic": priv.get("statistics_epsilon"),
                "epsilon_training": train,
                "epsilon_job": priv.get("epsilon"),
                "epsilon_ledger_total": priv.get("ledger_epsilon_total"),
                "delta_ledger": priv.get("ledger_delta"),
            }
        )
    return out


def _f(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}"


def table(found: list[dict[str, Any]]) -> str:
    head = (
        "| bank | alone (15 own, no privacy) | alone, same DP-SGD | federated, no consortium (in process) "
        "| **federated + exact consortium** | federated + DP consortium, DP-SGD, HE | pooled (15) "
        "| exact - alone | DP fed - alone | epsilon: statistic + training = ledger (delta) |"
    )
    lines = [head, "|---" + "|---:" * 9 + "|"]
    for r in found:
        gain = "—" if r["alone"] is None else f"{r['fed_exact_consortium'] - r['alone']:+.3f}"
        dp_fed = r["fed_dp_consortium_dpsgd_he"]
        gap = "—" if r["alone"] is None or dp_fed is None else f"{dp_fed - r['alone']:+.3f}"
        eps = (
            f"{_f(r['epsilon_statistic'])} + {_f(r['epsilon_job'])} = {_f(r['epsilon_ledger_total'])} "
            f"({r['delta_ledger']:g})"
            if r["epsilon_ledger_total"] is not None
            else "—"
        )
        keys = ("alone", "alone_dp", "fed_no_consortium_in_process")
        cells = [r["bank"], *(_f(r[k]) for k in keys), f"**{_f(r['fed_exact_consortium'])}**"]
        cells += [_f(r["fed_dp_consortium_dpsgd_he"]), _f(r["pooled"]), gain, gap, eps]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bars(found: list[dict[str, Any]]) -> dict[str, Any]:
    gains = {r["bank"]: r["fed_exact_consortium"] - r["alone"] for r in found}
    out: dict[str, Any] = {"non_private_bar_met": min(gains.values()) >= BAR, "exact_gain": gains}
    out["min_exact_gain"] = min(gains.values())
    if all(r["fed_dp_consortium_dpsgd_he"] is not None for r in found):
        gaps = {r["bank"]: r["fed_dp_consortium_dpsgd_he"] - r["alone"] for r in found}
        out.update(dp_bar_met=min(gaps.values()) > 0.0, min_dp_gap=min(gaps.values()), dp_gap=gaps)
        out["every_ledger_within_epsilon_4"] = all(
            (r["epsilon_ledger_total"] or 0.0) <= 4.0 + 1e-9 for r in found
        )
    return out


def mean_rows(per_run: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of several runs (seeds) of the same jobs, each number the mean over the runs."""
    out = []
    for rows_ in zip(*per_run, strict=True):
        row: dict[str, Any] = {"bank": rows_[0]["bank"]}
        for key in rows_[0]:
            values = [r[key] for r in rows_ if key != "bank"]
            if key != "bank":
                row[key] = None if any(v is None for v in values) else float(np.mean(values))
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "exact", type=Path, nargs="+", help="run directories of the consortium job (one per seed)"
    )
    parser.add_argument(
        "--dp",
        type=Path,
        action="append",
        default=[],
        help="run directory of consortium_dp_he (repeat per seed)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the rows and bars here")
    args = parser.parse_args()
    exact = [_summary(run) for run in args.exact]
    dp = [_summary(run) for run in args.dp] or [None] * len(exact)
    if len(dp) != len(exact):
        raise SystemExit(
            f"{len(exact)} consortium runs but {len(dp)} consortium_dp_he runs: one of each per seed"
        )
    per_run = [rows(e, d) for e, d in zip(exact, dp, strict=True)]
    found = mean_rows(per_run)
    print(f"mean over {len(per_run)} run(s), seeds {[e.get('seed') for e in exact]}")
    print(table(found))
    checked = bars(found)
    checked["per_seed_min_exact_gain"] = {
        str(e.get("seed")): bars(r)["min_exact_gain"] for e, r in zip(exact, per_run, strict=True)
    }
    print(json.dumps(checked, indent=1))
    if args.json is not None:
        body = {"exact_runs": [str(r) for r in args.exact], "dp_runs": [str(r) for r in args.dp],
                "seeds": [e.get("seed") for e in exact],
                "exact_wall_seconds": [e.get("wall_seconds") for e in exact],
                "machine": machine(), "rows": found, "rows_per_seed": per_run, "bars": checked}  # fmt: skip
        args.json.write_text(json.dumps(body, indent=1) + "\n")


if __name__ == "__main__":
    main()

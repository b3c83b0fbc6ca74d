"""The docs' result tables, rendered from benchmarks/results/*.json (never typed by hand).

A table lives between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` in a Markdown file;
``python benchmarks/tables.py`` rewrites every such block from its JSON, ``--check`` exits 1 naming
the stale ones (``tests/test_doc_tables.py`` runs the check).

- ``medical_headline``: the medical example's jobs, accuracy beside balanced accuracy and AUC, per
  hospital, with each hospital's majority-class reference (``medical_headline.json``);
- ``flamby_heart``: fedcore under FLamby's Fed-Heart-Disease protocol beside the published means
  (``flamby_heart.json``);
- ``flamby_tcga``: the same for Fed-TCGA-BRCA (``flamby_tcga.json``);
- ``survival_dp``: Fed-TCGA-BRCA by the Cox and the Weibull likelihoods, without DP and with
  DP-SGD, and what each region's ledger charged (``survival_dp.json``);
- ``robustness_heart``, ``robustness_finance``, ``robustness_heart_dp``: attack x aggregator
  (``robustness.json``; ``benchmarks/robustness.py`` prints the same tables);
- ``init_defaults``: ``fedcore init``'s default job, federated against alone per site, over resampled
  splits (``init_defaults.json``); ``init_gaps``: its hospitals with empty values indicated or dropped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCS = ("README.md", "docs/benchmarks.md", "examples/medical/README.md", "examples/survival/README.md")
HOSPITALS = ("cleveland", "hungary", "switzerland", "va")
JOB_TEXT = {
    "default": "`default`: FedYogi",
    "fedavg": "`fedavg`: FedAvg",
    "dp": "`dp`: FedYogi + DP-SGD, epsilon 1",
    "alone": "each hospital alone (baseline)",
    "pooled": "all rows pooled (baseline)",
}


def _load(name: str) -> Any:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _f(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) else "-"


def medical_headline() -> str:
    body = _load("medical_headline")
    rows = body["rows"]
    head = "| model | metric | " + " | ".join(HOSPITALS) + " | mean (sd over seeds) |"
    lines = [head, "|---|---|" + "---|" * (len(HOSPITALS) + 1)]
    for job, text in JOB_TEXT.items():
        r = rows[job]
        for metric in ("accuracy", "balanced_accuracy", "auc"):
            cells = [_f(r[h].get(metric)) for h in HOSPITALS]
            mean = f"{_f(r['mean'].get(metric))} ({_f(r['sd_over_seeds'].get(metric))})"
            lines.append(
                f"| {text if metric == 'accuracy' else ''} | {metric} | " + " | ".join(cells) + f" | {mean} |"
            )
    majority = rows["default"]
    cells = [_f(majority[h]["majority_class_accuracy"]) for h in HOSPITALS]
    lines.append(
        "| majority class of each hospital | accuracy | "
        + " | ".join(cells)
        + f" | {_f(majority['mean']['majority_class_accuracy'])} |"
    )
    return "\n".join(lines)


def medical_compact() -> str:
    """One row per model: each hospital's accuracy / balanced accuracy / AUC, and their means."""
    rows = _load("medical_headline")["rows"]
    metrics = ("accuracy", "balanced_accuracy", "auc")
    lines = [
        "| model | " + " | ".join(HOSPITALS) + " | mean over hospitals |",
        "|---|" + "---|" * (len(HOSPITALS) + 1),
    ]
    for job, text in JOB_TEXT.items():
        r = rows[job]
        cells = [" / ".join(_f(r[h].get(m)) for m in metrics) for h in HOSPITALS]
        mean = " / ".join(_f(r["mean"].get(m)) for m in metrics)
        lines.append(f"| {text} | " + " | ".join(cells) + f" | **{mean}** |")
    r = rows["default"]
    cells = [f"{_f(r[h]['majority_class_accuracy'])} / 0.500 / -" for h in HOSPITALS]
    lines.append(
        "| each hospital's majority class | "
        + " | ".join(cells)
        + f" | {_f(r['mean']['majority_class_accuracy'])} / 0.500 / - |"
    )
    return "\n".join(lines)


def flamby_heart_short() -> str:
    """FLamby's protocol: fedcore (FLamby's initial weights) beside the published means, one row each."""
    rows = _load("flamby_heart")["inits"]["flamby"]["rows"]
    local = [n for n in rows if n.startswith("local_")]
    lines = [
        "| method | published accuracy | fedcore accuracy | difference | fedcore balanced accuracy / AUC |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if name in local:
            continue
        got = f"{r['mean_accuracy']:.3f}" if "mean_accuracy" in r else "pending (client algorithm API)"
        diff = f"{r['difference']:+.3f}" if "difference" in r else ""
        means = r.get("means", {})
        other = f"{_f(means.get('balanced_accuracy'))} / {_f(means.get('auc'))}" if means else ""
        lines.append(f"| {name} | {r['published_mean']:.3f} | {got} | {diff} | {other} |")
    pub = " / ".join(f"{rows[n]['published_mean']:.3f}" for n in local)
    got = " / ".join(f"{rows[n]['mean_accuracy']:.3f}" for n in local)
    lines.append(f"| each hospital alone ({', '.join(n[6:] for n in local)}) | {pub} | {got} | | |")
    return "\n".join(lines)


def flamby_heart() -> str:
    body = _load("flamby_heart")
    inits = body["inits"]
    flamby, own = inits.get("flamby", {}).get("rows", {}), inits.get("fedcore", {}).get("rows", {})
    lines = [
        "| method | published (FLamby) | fedcore, FLamby's initial weights | difference "
        "| fedcore, own initial weights | difference |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in flamby.items():
        cells = []
        for r in (row, own.get(name, {})):
            if "mean_accuracy" in r:
                cells += [
                    f"{r['mean_accuracy']:.3f} (sd {r['sd_over_seeds']:.3f})",
                    f"{r['difference']:+.3f}",
                ]
            else:
                cells += [r.get("pending", "-"), ""]
        lines.append(f"| {name} | {row['published_mean']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flamby_tcga() -> str:
    rows = _load("flamby_tcga")["rows"]
    lines = [
        "| method | published C-index (sd over seeds) | fedcore (sd over seeds) | difference | tolerance "
        "| within |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        bar = " (bar)" if r["in_bar"] else ""
        lines.append(
            f"| {name}{bar} | {r['published_mean']:.3f} ({r['published_sd_over_seeds']:.3f}) | "
            f"{r['mean_c_index']:.3f} ({r['sd_over_seeds']:.3f}) | {r['difference']:+.3f} | "
            f"{r['tolerance']:.3f} | {'yes' if r['within_tolerance'] else 'no'} |"
        )
    return "\n".join(lines)


SURVIVAL_DP = {  # row -> (likelihood, training, DP)
    "cox_pooled": ("Cox", "pooled, Adam 0.1 (baseline)", "-"),
    "weibull_pooled": ("Weibull", "pooled, Adam 0.01 (baseline)", "-"),
    "cox_fedavg": ("Cox", "FedAvg (`fedavg`)", "-"),
    "cox_fedyogi": ("Cox", "FedYogi (`fedyogi`)", "-"),
    "weibull_fedavg": ("Weibull", "FedAvg, clients Adam 0.01", "-"),
    "weibull_fedyogi": ("Weibull", "FedYogi, clients Adam 0.01", "-"),
    "dp_fedavg": ("Weibull", "FedAvg (`dp`)", "DP-SGD, epsilon 1"),
    "dp_fedyogi": ("Weibull", "FedYogi, server lr 0.1", "DP-SGD, epsilon 1"),
    "dp_fedavg_eps3": ("Weibull", "FedAvg (`dp`)", "DP-SGD, epsilon 3"),
}


def survival_dp() -> str:
    rows = _load("survival_dp")["rows"]
    lines = [
        "| likelihood | training | DP | C-index (sd over seeds) | lowest seed | epsilon charged (ledger, "
        "largest region) |",
        "|---|---|---|---|---|---|",
    ]
    for name, (likelihood, how, dp) in SURVIVAL_DP.items():
        r = rows[name]
        charged = f"{max(r['ledger_epsilon'].values()):.3f}" if "ledger_epsilon" in r else "-"
        lines.append(
            f"| {likelihood} | {how} | {dp} | {r['mean_c_index']:.3f} ({r['sd_over_seeds']:.3f}) | "
            f"{r['min_c_index']:.3f} | {charged} |"
        )
    return "\n".join(lines)


def robustness_table(name: str, result: dict[str, Any]) -> str:
    """Rules x attacks, each cell the last metric (AUC) over the seeds and its drop against no attack."""
    m = result["metrics"][-1]
    attacks = list(next(iter(result["cells"].values())))
    lines = [f"**{name}** ({m}; drop against no attack in brackets; attacker {result['attacker']})", ""]
    lines += ["| aggregator | " + " | ".join(attacks) + " |", "|---|" + "---|" * len(attacks)]
    for agg, cells in result["cells"].items():
        row = [
            f"{cells[a][m]:.3f}" + ("" if a == "none" else f" ({cells[a]['drop_' + m]:+.3f})")
            for a in attacks
        ]
        lines.append(f"| {agg} | " + " | ".join(row) + " |")
    for agg, why in result["refused"].items():
        why = why.split(" (its min_updates())")[0]
        lines.append(f"| {agg} | refused before round 1: {why} |" + " |" * (len(attacks) - 1))
    if name == "heart_dp":
        eps = {agg: cells["none"]["epsilon"] for agg, cells in result["cells"].items()}
        charged = ", ".join(f"{a} {e:.3f}" for a, e in eps.items())
        lines += ["", f"epsilon charged per hospital (ledger, mean): {charged}"]
    return "\n".join(lines)


def _robustness(name: str) -> Callable[[], str]:
    return lambda: robustness_table(name, _load("robustness")["results"][name])


def init_defaults() -> str:
    body = _load("init_defaults")["candidates"]["written"]["data"]
    lines = [
        "| data set | site | train / test rows | federated | alone | gain (se; seeds >= 0) | pooled "
        "| fine-tuned | fine-tuned, proximal | mean of federated and fine-tuned |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, result in body.items():
        for site, v in result["sites"].items():
            if "gain" not in v:
                lines.append(f"| {name} | {site} | {v['train_rows']:.0f} / {v['test_rows']:.0f} | "
                             "no AUC: one class in every test set | | | | | | |")  # fmt: skip
                continue
            gain = (
                f"{v['gain']:+.3f} ({v['gain_se']:.3f}; {v['seeds_gain_ge_0']:.0f}/{v['seeds_scored']:.0f})"
            )
            cells = (
                [_f(v[k]) for k in ("auc", "alone_auc")]
                + [gain]
                + [_f(v[k]) for k in ("pooled_auc", "finetune_auc", "finetune_prox_auc", "ensemble_auc")]
            )
            lines.append(
                f"| {name} | {site} | {v['train_rows']:.0f} / {v['test_rows']:.0f} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def init_gaps() -> str:
    """The hospitals with empty values kept and indicated (``written``) against dropped (``drop_gaps``)."""
    cands = _load("init_defaults")["candidates"]
    kept, dropped = (cands[c]["data"]["heart"]["sites"] for c in ("written", "drop_gaps"))
    lines = [
        "| hospital | rows kept: dropped / indicated | federated: dropped / indicated "
        "| alone: dropped / indicated | gain over alone: dropped / indicated |",
        "|---|---|---|---|---|",
    ]
    for site, v in kept.items():
        d = dropped[site]
        rows = f"{d['train_rows'] + d['test_rows']:.0f} / {v['train_rows'] + v['test_rows']:.0f}"
        cells = [f"{_f(d[k])} / {_f(v[k])}" for k in ("auc", "alone_auc")]
        lines.append(f"| {site} | {rows} | {' | '.join(cells)} | {d['gain']:+.3f} / {v['gain']:+.3f} |")
    return "\n".join(lines)


TABLES: dict[str, Callable[[], str]] = {
    "medical_headline": medical_headline,
    "medical_compact": medical_compact,
    "flamby_heart": flamby_heart,
    "flamby_heart_short": flamby_heart_short,
    "flamby_tcga": flamby_tcga,
    "survival_dp": survival_dp,
    **{f"robustness_{n}": _robustness(n) for n in ("heart", "finance", "heart_dp")},
    "init_defaults": init_defaults,
    "init_gaps": init_gaps,
}
_BLOCK = re.compile(r"(<!-- table:(\w+) -->\n)(.*?)(<!-- /table:\2 -->)", re.S)


def render(text: str) -> str:
    """``text`` with every table block rewritten from its JSON."""
    return _BLOCK.sub(lambda m: f"{m.group(1)}{TABLES[m.group(2)]()}\n{m.group(4)}", text)


def stale() -> list[str]:
    """The docs whose tables differ from the JSON."""
    return [
        d for d in DOCS if (REPO / d).is_file() and render((REPO / d).read_text()) != (REPO / d).read_text()
    ]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="exit 1 if a doc's table differs from its JSON")
    args = ap.parse_args()
    if args.check:
        bad = stale()
        for d in bad:
            print(f"{d}: a table differs from benchmarks/results (run python benchmarks/tables.py)")
        return 1 if bad else 0
    for d in DOCS:
        path = REPO / d
        if path.is_file():
            path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

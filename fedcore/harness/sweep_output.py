"""What a sweep writes (``fedcore.harness.sweep``): ``sweep.csv`` (one row per grid point: its axis
values, seed, status, the reason a site refused it, the noise it drew, seconds, and every metric the
point's run reports), ``sweep.md`` (the points averaged over seeds, the headline metric with its
standard deviation), ``sweep.png`` (the headline metric against the first axis, one line per
combination of the others) and ``sweep.json`` (the grid, the noise, the files)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fedcore.harness.sweep import SweepGrid, SweepRow

__all__ = ["HEADLINES", "headline", "write_outputs"]

HEADLINES = ("mean_site_accuracy", "mean_site_c_index", "mean_site_r2", "mean_site_loss")
"""The metric a table and plot lead with: the first of these the points report."""


def headline(rows: Sequence[Mapping[str, Any]]) -> str:
    keys = {k for r in rows for k in r}
    return next((h for h in HEADLINES if h in keys), "mean_site_loss")


def write_outputs(
    out: Path, grid: SweepGrid, rows: Sequence[SweepRow], *, job_file: Path, noise: str
) -> dict[str, Any]:
    """Write the four files into ``out``; return ``sweep.json``'s content."""
    axes = [k for k, _ in grid.named_axes()]
    flat = [_flat(r, axes, noise) for r in rows]
    metrics = sorted({k for r in rows for k in r.metrics})
    columns = [*axes, "seed", "status", "reason", "noise", "seconds", *metrics]
    with (out / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)
    lead = headline([r.metrics for r in rows])
    table = _markdown(flat, axes, lead, noise)
    (out / "sweep.md").write_text(table)
    plotted = _plot(out / "sweep.png", flat, axes, lead, noise)
    body = {
        "app_job": str(job_file),
        "noise": noise,
        "reproducible": grid.reproducible,
        "seeds": list(grid.seeds),
        "axes": {k: [_text(v) for v in values] for k, values in grid.named_axes()},
        "sets": list(grid.sets),
        "points": len(rows),
        "refused": sum(r.status != "ok" for r in rows),
        "headline": lead,
        "files": ["sweep.csv", "sweep.md", *(["sweep.png"] if plotted else []), "sweep.json"],
        "out": str(out),
    }
    (out / "sweep.json").write_text(json.dumps(body, indent=1))
    return body


def _text(value: Any) -> str:
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True)
    return str(value)


def _flat(row: SweepRow, axes: Sequence[str], noise: str) -> dict[str, Any]:
    return {
        **{k: _text(row.point.values[k]) for k in axes},
        "seed": row.point.seed,
        "status": row.status,
        "reason": row.reason,
        "noise": noise,
        "seconds": round(row.seconds, 3),
        **row.metrics,
    }


def _groups(
    flat: Sequence[Mapping[str, Any]], axes: Sequence[str]
) -> dict[tuple[str, ...], list[Mapping[str, Any]]]:
    out: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for r in flat:
        out.setdefault(tuple(str(r[k]) for k in axes), []).append(r)
    return out


def _markdown(flat: Sequence[Mapping[str, Any]], axes: Sequence[str], lead: str, noise: str) -> str:
    lines = [f"# Sweep: {lead} (mean over seeds, sd) - DP noise: {noise}", ""]
    head = [*axes, "seeds", lead, "sd", "epsilon_max", "status"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, group in _groups(flat, axes).items():
        ok = [r for r in group if r["status"] in ("ok", "capped") and lead in r]
        vals = [float(r[lead]) for r in ok]
        eps = [float(r["epsilon_max"]) for r in ok if "epsilon_max" in r]
        status = (
            "ok"
            if len(ok) == len(group)
            else "; ".join(sorted({f"{r['status']}: {r['reason']}" for r in group if r["status"] != "ok"}))
        )
        cells = [
            *key,
            str(len(group)),
            f"{np.mean(vals):.4f}" if vals else "-",
            f"{np.std(vals):.4f}" if vals else "-",
            f"{max(eps):.3g}" if eps else "-",
            status,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, flat: Sequence[Mapping[str, Any]], axes: Sequence[str], lead: str, noise: str) -> bool:
    """``lead`` (mean over seeds, sd as error bars) against the first axis, one line per combination
    of the other axes; nothing when no point succeeded."""
    ok = [r for r in flat if r["status"] in ("ok", "capped") and lead in r]
    if not ok:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, rest = (axes[0], list(axes[1:])) if axes else ("seed", [])
    xs = list(dict.fromkeys(str(r[first]) for r in flat))
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, group in _groups(ok, rest).items():
        means, sds = [], []
        for x in xs:
            vals = [float(r[lead]) for r in group if str(r[first]) == x]
            means.append(float(np.mean(vals)) if vals else float("nan"))
            sds.append(float(np.std(vals)) if vals else float("nan"))
        label = ", ".join(f"{k}={v}" for k, v in zip(rest, key, strict=True)) or lead
        ax.errorbar(range(len(xs)), means, yerr=sds, marker="o", capsize=3, label=label)
    ax.set_xticks(range(len(xs)), xs, rotation=20, fontsize="small")
    ax.set_xlabel(first)
    ax.set_ylabel(lead)
    ax.set_title(f"sweep: {lead} (mean over seeds)\nDP noise: {noise}", fontsize="small")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

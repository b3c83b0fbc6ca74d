"""The human report of a statistics batch: each statistic with its 95% interval, the epsilon each
site spent, the exact pooled value beside it (simulation only) and a plot of error against epsilon.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcore.analytics.vectors import head as first_rows
from fedcore.analytics.vectors import row_count

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["console_statistics", "write_statistics_report"]


def _num(v: Any) -> str:
    if v is None:
        return "—"
    v = float(v)
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


def _group(result: dict[str, Any], row: dict[str, Any]) -> str:
    """The group, and the item where a statistic has several (histogram buckets, quantile levels)."""
    item = "" if row["item"] == result["stat"] else str(row["item"])
    group = "" if row["group"] == "all" else str(row["group"])
    return ", ".join(p for p in (group, item) if p) or "all"


SHOWN_ROWS = 40
"""A statistic with more rows (a histogram of thousands of cells) is shown by its first ones and a
line saying how many more ``statistics.json`` holds."""


def _rows(body: dict[str, Any]) -> list[list[str]]:
    """One line per statistic, group and item: name, group, value, interval, exact, note."""
    out = []
    for result in body.get("results", []):
        count = row_count(result)
        if count > SHOWN_ROWS:
            more = f"... and {count - SHOWN_ROWS} more rows in statistics.json"
            out.append([result["name"], more, "", "", "", ""])
        for row in first_rows(result, SHOWN_ROWS):
            note = f"suppressed at {', '.join(row['suppressed_at'])}" if row["suppressed_at"] else ""
            interval = "—" if row["value"] is None else f"[{_num(row['low'])}, {_num(row['high'])}]"
            out.append(
                [result["name"], _group(result, row), _num(row["value"]), interval,
                 _num(row.get("exact_pooled")), note]
            )  # fmt: skip
    return out


_HEAD = ["statistic", "group", "value", "95% interval", "exact (sim.)", "note"]


def console_statistics(body: dict[str, Any]) -> Table:
    """The results as a rich table (``fedcore query``)."""
    from rich.table import Table

    table = Table(title=f"statistics {body.get('job_id', '')}")
    for title in _HEAD:
        table.add_column(
            title, justify="right" if title in ("value", "exact pooled (simulation)") else "left"
        )
    for row in _rows(body):
        table.add_row(*row)
    return table


def _spent(body: dict[str, Any]) -> list[str]:
    lines = ["| site | answered | epsilon spent on this batch | budget left after it |", "|---|---|---|---|"]
    for site, adm in sorted(body.get("admission", {}).items()):
        if not adm["accepted"]:
            lines.append(f"| {site} | refused: {adm['reason']} | 0 | — |")
            continue
        plan = adm["plan"]
        answered = "no: " + body["failed"][site] if site in body.get("failed", {}) else "yes"
        left = body.get("budget_after", {}).get(site, {}).get("remaining_epsilon")
        lines.append(f"| {site} | {answered} | {plan['epsilon']:.4g} | {_num(left)} |")
    return lines


def _plot(out: Path, body: dict[str, Any]) -> Path | None:
    curves = [(r["name"], r["error_curve"]) for r in body.get("results", []) if r.get("error_curve")]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, curve in curves:
        exact = abs(curve["exact"]) or 1.0
        relative = [e / exact for e in curve["mean_abs_error"]]
        ax.loglog(curve["epsilon"], relative, marker="o", label=f"{name} ({curve['item']})")
    ax.set_xlabel("epsilon per site")
    ax.set_ylabel("mean |error| / |exact pooled value|")
    ax.set_title("error against epsilon (20 repeats each, simulation)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "error_vs_epsilon.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_statistics_report(out: Path, body: dict[str, Any]) -> Path:
    """``report.md`` (and ``error_vs_epsilon.png``) in the run directory ``out``."""
    lines = [f"# Statistics {body.get('job_id', '')}", ""]
    for result in body.get("results", []):
        head = f"- **{result['name']}**: {result['statistic']}, epsilon {result['epsilon']:g} per site"
        lines.append(f"{head}; {result['noise']}")
    lines += ["", "| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(body)]
    lines += [
        "",
        "Intervals are 95% intervals for the exact statistic over the contributing rows (values clamped "
        "to the bounds; quantiles: the inverse empirical CDF): they hold the DP noise (from the scales each "
        "site sent), the sums' rounding and a quantile's bins (docs/statistics.md). "
        "`exact (sim.)` is the same statistic without noise over the rows of the sites that "
        "contributed (values clamped to the same bounds): a simulation-only reference no coordinator has.",
        "",
        "## Epsilon per site",
        "",
        *_spent(body),
    ]
    if any(r.get("per_site") for r in body.get("results", [])):
        lines += ["", "## Each site's own answer", "", "| statistic | site | group | value | 95% interval |"]
        lines.append("|---|---|---|---|---|")
        for result in body.get("results", []):
            per_site = {"rows": result.get("per_site", [])}
            if row_count(per_site) > SHOWN_ROWS:
                more = f"... and {row_count(per_site) - SHOWN_ROWS} more rows in statistics.json"
                lines.append(f"| {result['name']} | {more} | | | |")
            for p in first_rows(per_site, SHOWN_ROWS):
                lines.append(
                    f"| {result['name']} | {p['site']} | {_group(result, p)} | {_num(p['value'])} | "
                    f"[{_num(p['low'])}, {_num(p['high'])}] |"
                )
    plot = _plot(out, body)
    if plot is not None:
        lines += ["", "## Error against epsilon", "", f"![error against epsilon]({plot.name})"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

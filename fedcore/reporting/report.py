"""The human report of a run: Markdown with a PNG plot of the job's main metric per round vs the
baselines (``[evaluate] metric``, accuracy by default; ``<metric>.png``).

Every figure is one model's score on each site's own test set, per site in the tables and as a
mean over the sites in the headline, the plot and the console table; ``_columns`` names the
models and the summary keys they come from, so the four places cannot disagree. The published
convention (each site's model scored on every site's test set) is a column of its own, named as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["charged_line", "console_table", "main_metric", "plot_name", "write_report"]

_ORDER = (
    "accuracy",
    "balanced_accuracy",
    "auc",
    "auprc",
    "card_precision_top_k",
    "cost",
    "c_index",
    "r2",
    "mae",
)
_PUBLISHED = "alone, all test sets (published convention)"
_LEGEND = (
    "Per site, on its own test set: `federated` (the final model, scored by the simulation harness: "
    "`<metric>` in summary.json), `alone` (the model trained on that site only: `local_only_own_<metric>`), "
    "`alone, same DP` (the same under the job's DP-SGD: `local_only_dp_own_<metric>`), `pooled` (all sites' "
    "rows in one place: `pooled_own_<metric>`), `majority class` (always predicting the majority class of "
    "the site's training labels: `majority_class_accuracy`). `alone, all test sets (published convention)`: "
    "the site-only model averaged over every site's test set (`local_only_<metric>`). The mean row is the "
    "mean over the sites that have a value (`mean_site_<metric>`, `mean_local_only_own_<metric>`, "
    "`mean_local_only_dp_own_<metric>`, `pooled_<metric>`, `mean_majority_class_accuracy`, "
    "`mean_local_only_<metric>`). Everything but the sites' per-round evaluations is simulation only."
)


def _columns(metric: str) -> list[tuple[str, str, str]]:
    """(title, per-site key, key of the mean over sites) of every model scored on ``metric``."""
    cols = [
        ("federated", metric, f"mean_site_{metric}"),
        ("alone", f"local_only_own_{metric}", f"mean_local_only_own_{metric}"),
        ("alone, same DP", f"local_only_dp_own_{metric}", f"mean_local_only_dp_own_{metric}"),
        ("pooled", f"pooled_own_{metric}", f"pooled_{metric}"),
    ]
    if metric == "accuracy":
        cols.append(("majority class", "majority_class_accuracy", "mean_majority_class_accuracy"))
    return [*cols, (_PUBLISHED, f"local_only_{metric}", f"mean_local_only_{metric}")]


def _present(summary: dict[str, Any], metric: str) -> list[tuple[str, str, str]]:
    sites = summary.get("sites", {}).values()
    return [c for c in _columns(metric) if c[2] in summary or any(c[1] in v for v in sites)]


def _metrics(summary: dict[str, Any]) -> list[str]:
    """Every per-site metric of the federated model (``loss`` aside), the usual ones first."""
    found = {k.removeprefix("mean_site_") for k in summary if k.startswith("mean_site_")} - {"loss"}
    return sorted(found, key=lambda m: (_ORDER.index(m) if m in _ORDER else len(_ORDER), m))


def _exclusion(summary: dict[str, Any], metric: str) -> str:
    """``"mean over 3 of 4 sites; switzerland's test set has one class"``, or ``""``."""
    left_out = summary.get("excluded", {}).get(metric, [])
    if not left_out:
        return ""
    one_class = set(summary.get("one_class_test_sets", []))
    why = [
        f"{s}'s test set has one class" if s in one_class else f"{s} reports no {metric}" for s in left_out
    ]
    total = len(summary.get("sites", {}))
    return f"mean over {total - len(left_out)} of {total} sites; " + ", ".join(why)


def _withheld(curve: Sequence[float | None]) -> str:
    """What the per-round curve lacks because sites withheld their evaluations, or ``""``."""
    missing = [r for r, a in enumerate(curve, start=1) if a is None]
    if not missing:
        return ""
    which = ("round " if len(missing) == 1 else "rounds ") + ", ".join(map(str, missing))
    which = "all rounds" if len(missing) == len(curve) else which
    return f"per-round scores withheld by the sites' privacy policies ({which})"


def _references(metric: str) -> list[tuple[str, Any, Any, str]]:
    refs: list[tuple[str, Any, Any, str]] = [
        (f"pooled_{metric}", "k", "--", "pooled (baseline)"),
        (f"mean_local_only_own_{metric}", "tab:red", ":", "alone, own test set (baseline)"),
        (f"mean_local_only_dp_own_{metric}", "tab:purple", "-.", "alone, same DP (baseline)"),
    ]
    if metric == "accuracy":
        refs.append(("mean_majority_class_accuracy", "tab:gray", (0, (1, 4)), "majority class"))
    return refs


def main_metric(summary: dict[str, Any]) -> str:
    """The metric the report plots: the job's ``[evaluate] metric`` (accuracy for older summaries)."""
    return str(summary.get("metric") or "accuracy")


def _curve(summary: dict[str, Any]) -> list[float | None]:
    metric = main_metric(summary)
    return list(summary.get(f"per_round_mean_{metric}") or summary["per_round_mean_accuracy"])


def _draw(ax: Any, summary: dict[str, Any], last: int) -> None:
    """The lines the summary has numbers for, each with its own legend row."""
    metric = main_metric(summary)
    released = [(r, a) for r, a in enumerate(_curve(summary), start=1) if a is not None]
    if released:
        rounds, accs = zip(*released, strict=True)
        ax.plot(rounds, accs, marker="o", label=f"federated ({summary['aggregator']}), sites' evaluations")
    if f"mean_site_{metric}" in summary:
        star = "final model (simulation harness)"
        ax.plot([last], [summary[f"mean_site_{metric}"]], marker="*", ms=12, ls="", label=star)
    for key, color, style, label in _references(metric):
        if key in summary:
            ax.axhline(summary[key], color=color, ls=style, label=label)


def _plot(out: Path, summary: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metric, curve = main_metric(summary), _curve(summary)
    last = len(curve) or int(summary["rounds"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    _draw(ax, summary, last)
    ax.set_xlim(0.5, last + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(f"mean {metric} over the sites' test sets")
    note = _withheld(curve)
    ax.set_title(f"{summary['job']}: {metric} per round" + (f"\n{note}" if note else ""), fontsize="medium")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    path = out / plot_name(summary)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_name(summary: dict[str, Any]) -> str:
    """``accuracy.png``, or ``<metric>.png`` for a job whose main metric is another."""
    return f"{main_metric(summary)}.png"


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _privacy_lines(priv: dict[str, Any]) -> list[str]:
    if not priv:
        return []
    lines = ["## Privacy", "", f"- encrypted: {priv.get('encrypted', 'nothing')}"]
    for name, settings in priv.get("requested", {}).items():
        lines.append(f"- requested by the job: `{name}` {settings}")
    if charged_line({"privacy": priv}):
        lines.append(f"- {charged_line({'privacy': priv})}")
    if "he_upload_bytes_per_site_round" in priv:
        lines.append(
            f"- HE ciphertext upload per site and round: {priv['he_upload_bytes_per_site_round']:,.0f} bytes"
        )
    if "mean_membership_attack_auc" in priv:
        lines.append(
            f"- membership-inference attack AUC (loss threshold, train vs test rows; 0.5 = no leak "
            f"detected), mean over sites: {priv['mean_membership_attack_auc']:.3f}"
        )
    sites = priv.get("sites", {})
    if sites:
        lines += [
            "",
            "What each site released under its own plan, and what it charged (epsilon at the site's delta, "
            "per the unit it protects: one example (row), one customer with all its rows, or the site's "
            "whole contribution; a release without epsilon is uncharged):",
            "",
            "| site | release | count | protection | epsilon | per |",
            "|---|---|---|---|---|---|",
        ]
        for name, v in sorted(sites.items()):
            if not v.get("accepted", True):
                lines.append(f"| {name} | refused the job | | {v.get('reason', '')} | | |")
                continue
            for r in v.get("releases", []):
                eps = "" if r.get("epsilon") is None else _fmt(r["epsilon"])
                per = r.get("unit") or ""
                lines.append(f"| {name} | {r['what']} | {r['count']} | {r['protection']} | {eps} | {per} |")
            left = _fmt(v.get("remaining_epsilon", ""))
            charged = _fmt(v.get("epsilon", 0.0))
            per = v.get("epsilon_unit") or ""
            asked = v.get("requested_epsilon")
            asked_text = "" if asked is None else f"the job's total, as requested: at most {asked:g}; "
            lines.append(
                f"| {name} | **whole job, charged** | | {asked_text}remaining budget {left} "
                f"| **{charged}** | {per} |"
            )
            if "ledger_epsilon_total" in v:  # a job with a statistics phase: both on one ledger
                stats, total = _fmt(v.get("statistics_epsilon") or 0.0), _fmt(v["ledger_epsilon_total"])
                lines += [
                    f"| {name} | statistics before the job | 1 | [prepare] statistics | {stats} "
                    f"| {v.get('statistics_unit') or ''} |",
                    f"| {name} | **ledger total (statistics and job, composed)** | | | **{total}** | |",
                ]
        targeted = any(v.get("requested_epsilon") is not None for v in sites.values())
        lines += ["", _COMPOSED + (_TARGETED if targeted else "")]
    return [*lines, ""]


_COMPOSED = (
    "A release's epsilon is its own; a site's charge composes them (PLD), which is less than their sum "
    "(`fedcore ledger SITE` shows the composition charge by charge)."
)
_TARGETED = (
    " The epsilon a job names is its total at each site: the site calibrates DP-SGD so that it and every "
    "other release of its plan compose to at most that figure."
)


def charged_line(summary: dict[str, Any]) -> str:
    """``"epsilon charged (whole job, composed): a 0.999, b 0.999 (requested at most 1)"``, or ``""``:
    the per-site figure report.md, summary.json and ``fedcore ledger`` show."""
    sites = {n: v for n, v in summary.get("privacy", {}).get("sites", {}).items() if "epsilon" in v}
    if not sites:
        return ""
    each = ", ".join(f"{n} {_fmt(float(v['epsilon']))}" for n, v in sorted(sites.items()))
    asked = {v.get("requested_epsilon") for v in sites.values()} - {None}
    return f"epsilon charged per site (whole job, composed): {each}" + (
        f" (requested: at most {', '.join(f'{a:g}' for a in sorted(asked))})" if asked else ""
    )


def _headline(summary: dict[str, Any]) -> list[str]:
    """One line per metric: the mean over the sites of each model, and what the mean leaves out."""
    lines = [
        "Means over the sites, every model scored on each site's own test set (see the tables):",
        "",
    ]
    for m in _metrics(summary):
        cols = [c for c in _present(summary, m) if c[0] != _PUBLISHED and c[2] in summary]
        over = _exclusion(summary, m) or f"mean over the {len(summary.get('sites', {}))} sites"
        figures = "".join(f"; {t} {_fmt(summary[k])}" for t, _, k in cols[1:])
        lines.append(f"- {m} ({over}): federated **{_fmt(summary[cols[0][2]])}**{figures}")
    published = [(m, f"mean_local_only_{m}") for m in _metrics(summary) if f"mean_local_only_{m}" in summary]
    if published:
        lines.append(
            "- published convention (each site's model scored on every site's test set, then averaged; "
            "`mean_local_only_<metric>`): " + "; ".join(f"{m} {_fmt(summary[k])}" for m, k in published)
        )
    return [*lines, ""]


def _site_table(summary: dict[str, Any], metric: str) -> list[str]:
    """One Markdown table of ``metric`` per site and model, with the means; empty when none has it."""
    cols, sites = _present(summary, metric), summary.get("sites", {})
    if not cols:
        return []
    lines = [f"### {metric}", "", "| site | " + " | ".join(t for t, _, _ in cols) + " |"]
    lines.append("|---" * (len(cols) + 1) + "|")
    for name in sorted(sites):
        lines.append(f"| {name} | " + " | ".join(_fmt(sites[name].get(k, "")) for _, k, _ in cols) + " |")
    lines.append("| **mean** | " + " | ".join(_fmt(summary.get(k, "")) for _, _, k in cols) + " |")
    note = _exclusion(summary, metric)
    return [*lines, *(["", f"{metric}: {note}; left out of the mean."] if note else []), ""]


def console_table(summary: dict[str, Any]) -> Table:
    """The headline figures as a rich table: per metric, the mean over the sites of each model."""
    from rich.table import Table

    metrics = _metrics(summary)
    means = {m: {t: k for t, _, k in _columns(m) if k in summary} for m in metrics}
    titles = ("federated", "alone", "alone, same DP", "pooled")
    shown = [t for t in titles if any(t in v for v in means.values())]
    notes = [f"{m}: {_exclusion(summary, m)}" for m in metrics if _exclusion(summary, m)]
    charged = [charged_line(summary)] if charged_line(summary) else []
    table = Table(
        title="mean over the sites",
        caption="\n".join(["each model on each site's own test set", *notes, *charged]),
        caption_justify="left",
    )
    for title in ("metric", *shown):
        table.add_column(title, justify="left" if title == "metric" else "right")
    for m in metrics:
        table.add_row(m, *(_fmt(summary[means[m][t]]) if t in means[m] else "" for t in shown))
    return table


def _rejected_lines(rejected: dict[str, dict[str, str]]) -> list[str]:
    """Every reply the coordinator rejected, with its reason (the round went on without it)."""
    if not rejected:
        return []
    count = sum(len(r) for r in rejected.values())
    lines = ["## Rejected replies", "", f"{count} replies were rejected and left out of their round:", ""]
    lines += ["| round | site | reason |", "|---|---|---|"]
    for rnd, sites in rejected.items():
        for site, reason in sorted(sites.items()):
            lines.append(f"| {rnd} | {site} | {reason.replace('|', '/')} |")
    return [*lines, ""]


def write_report(out: Path, summary: dict[str, Any]) -> Path:
    """Write ``report.md`` and the plot (:func:`plot_name`) into the run directory ``out``."""
    plot = _plot(out, summary)
    seeds = (
        f" (mean over {len(summary['seeds'])} seeds; per-seed runs in seed-*/)."
        if "seeds" in summary
        else "."
    )
    lines = [
        f"# fedcore run: {summary['job']}",
        "",
        f"Aggregator **{summary['aggregator']}**, {summary['rounds']} rounds, seed {summary['seed']}, "
        f"{summary['wall_seconds']:.1f} s wall{seeds}",
        "",
        *_headline(summary),
    ]
    if "attack" in summary:  # a simulated attack: said before any figure
        a = summary["attack"]
        lines[4:4] = [f"**Simulated attack** `{a['name']}` at {', '.join(a['sites'])} (simulation only).", ""]
    dropped = {site: n for site, n in summary.get("dropped_rows", {}).items() if n}
    if dropped:
        counts = ", ".join(f"{site} {n}" for site, n in sorted(dropped.items()))
        lines += [
            f"Rows left out for a missing value in a used column ([data] incomplete_rows): {counts}.",
            "",
        ]
    from fedcore.reporting.gain import gain_lines

    if gained := gain_lines(summary, main_metric(summary)):
        lines += ["Does the federation pay? " + gained[0] + ".", "", *(f"- {ln}" for ln in gained[1:]), ""]
    for m in _metrics(summary):
        lines += _site_table(summary, m)
    withheld = _withheld(_curve(summary))
    lines += [_LEGEND, "", f"![{main_metric(summary)} per round]({plot.name})", ""]
    if withheld:
        lines += [f"Plot: {withheld}; the star is the final model's score (simulation harness).", ""]
    lines += _privacy_lines(summary.get("privacy", {}))
    lines += _rejected_lines(summary.get("rejected", {}))
    lines += [f"- {note}" for note in summary.get("notes", [])] + [""]
    for extra in summary.get("report_sections", []):
        lines += [extra, ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path

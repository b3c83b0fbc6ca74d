"""The human report of a run: Markdown with a PNG plot of accuracy per round vs the baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_report"]


def _plot(out: Path, summary: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = summary["per_round_mean_accuracy"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    released = [(r, a) for r, a in enumerate(curve, start=1) if a is not None]
    if released:
        ax.plot(*zip(*released, strict=True), marker="o", label=f"federated ({summary['aggregator']})")
    if "mean_site_accuracy" in summary:
        ax.plot(
            [len(curve)], [summary["mean_site_accuracy"]], marker="*", ms=12, ls="",
            label="final model (simulation harness)",
        )  # fmt: skip
    if "pooled_accuracy" in summary:
        ax.axhline(summary["pooled_accuracy"], color="k", ls="--", label="pooled (baseline)")
    if "mean_local_only_accuracy" in summary:
        ax.axhline(
            summary["mean_local_only_accuracy"],
            color="tab:red",
            ls=":",
            label="local-only, mean over sites",
        )
    ax.set_xlabel("round")
    ax.set_ylabel("mean accuracy over the sites' test sets")
    ax.set_title(f"{summary['job']}: accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    path = out / "accuracy.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _privacy_lines(priv: dict[str, Any]) -> list[str]:
    if not priv:
        return []
    lines = ["## Privacy", "", f"- encrypted: {priv.get('encrypted', 'nothing')}"]
    for name, settings in priv.get("requested", {}).items():
        lines.append(f"- requested by the job: `{name}` {settings}")
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
            "What each site released under its own plan, and what it charged (epsilon at the site's delta; "
            "a release without epsilon is uncharged):",
            "",
            "| site | release | count | protection | epsilon |",
            "|---|---|---|---|---|",
        ]
        for name, v in sorted(sites.items()):
            if not v.get("accepted", True):
                lines.append(f"| {name} | refused the job | | {v.get('reason', '')} | |")
                continue
            for r in v.get("releases", []):
                eps = "" if r.get("epsilon") is None else _fmt(r["epsilon"])
                lines.append(f"| {name} | {r['what']} | {r['count']} | {r['protection']} | {eps} |")
            left = _fmt(v.get("remaining_epsilon", ""))
            charged = _fmt(v.get("epsilon", 0.0))
            lines.append(f"| {name} | **whole job, charged** | | remaining budget {left} | **{charged}** |")
    return [*lines, ""]


_METRICS = ("accuracy", "auprc", "card_precision_top_k", "cost")
_COLUMNS = (
    ("federated", ""),
    ("alone", "local_only_own_"),
    ("alone, same DP", "local_only_dp_own_"),
    ("pooled", "pooled_own_"),
    ("alone, all test sets", "local_only_"),
)


def _site_table(sites: dict[str, dict[str, Any]], metric: str) -> list[str]:
    """One Markdown table of ``metric`` per site and model; empty when no site reports it."""
    cols = [(title, f"{prefix}{metric}") for title, prefix in _COLUMNS]
    cols = [(t, k) for t, k in cols if any(k in v for v in sites.values())]
    if not cols:
        return []
    lines = [f"### {metric}", "", "| site | " + " | ".join(t for t, _ in cols) + " |"]
    lines.append("|---" * (len(cols) + 1) + "|")
    for name in sorted(sites):
        lines.append(f"| {name} | " + " | ".join(_fmt(sites[name].get(k, "")) for _, k in cols) + " |")
    return [*lines, ""]


def write_report(out: Path, summary: dict[str, Any]) -> Path:
    """Write ``report.md`` and ``accuracy.png`` into the run directory ``out``."""
    plot = _plot(out, summary)
    lines = [
        f"# fedcore run: {summary['job']}",
        "",
        f"Aggregator **{summary['aggregator']}**, {summary['rounds']} rounds, seed {summary['seed']}, "
        f"{summary['wall_seconds']:.1f} s wall"
        + (
            f" (mean over {len(summary['seeds'])} seeds; per-seed runs in seed-*/)."
            if "seeds" in summary
            else "."
        ),
        "",
    ]
    for m in _METRICS:
        if f"mean_site_{m}" not in summary:
            continue
        line = f"- {m}, mean over the sites (federated model): **{_fmt(summary[f'mean_site_{m}'])}**"
        if f"pooled_{m}" in summary:
            line += (
                f"; pooled training (simulation-only reference) {_fmt(summary[f'pooled_{m}'])}; "
                f"local-only, mean over sites {_fmt(summary.get(f'mean_local_only_{m}', ''))}"
            )
        lines.append(line)
    lines.append("")
    for m in _METRICS:
        lines += _site_table(summary["sites"], m)
    lines += [
        "Per site, on its own test set: `federated` (`<metric>` in summary.json), `alone` (the model "
        "trained on that site only: `local_only_own_<metric>`), `alone, same DP` (the same under the "
        "job's DP-SGD: `local_only_dp_own_<metric>`), `pooled` (all sites' rows in one place, "
        "simulation only: `pooled_own_<metric>`). `alone, all test sets`: the site-only model "
        "averaged over every site's test set (the published convention: `local_only_<metric>`).",
        "",
        f"![accuracy per round]({plot.name})",
        "",
    ]
    lines += _privacy_lines(summary.get("privacy", {}))
    lines += [f"- {note}" for note in summary.get("notes", [])] + [""]
    for extra in summary.get("report_sections", []):
        lines += [extra, ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path

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
    ax.plot(range(1, len(curve) + 1), curve, marker="o", label=f"federated ({summary['aggregator']})")
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
    if priv.get("dpsgd"):
        lines.append(f"- sample-level DP-SGD requested by the job: {priv['dpsgd']}")
    if priv.get("client_dp"):
        lines.append(f"- client-level DP requested by the job: {priv['client_dp']}")
    if "not_accounted" in priv:
        lines.append(f"- not covered by the DP accounting: {priv['not_accounted']}")
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
    if any("epsilon" in v for v in sites.values()):
        lines += [
            "",
            "| site | epsilon spent by this job | delta | budget epsilon | remaining epsilon |",
            "|---|---|---|---|---|",
        ]
        for name, v in sites.items():
            lines.append(
                f"| {name} | {_fmt(v.get('epsilon', 0.0))} | {v.get('delta', '')} | "
                f"{_fmt(v.get('budget_epsilon', ''))} | {_fmt(v.get('remaining_epsilon', ''))} |"
            )
    return [*lines, ""]


def write_report(out: Path, summary: dict[str, Any]) -> Path:
    """Write ``report.md`` and ``accuracy.png`` into the run directory ``out``."""
    plot = _plot(out, summary)
    cols = [
        "accuracy",
        "local_only_accuracy",
        "local_only_own_accuracy",
        "auprc",
        "local_only_auprc",
    ]
    cols = [c for c in cols if any(c in s for s in summary["sites"].values())]
    lines = [
        f"# fedcore run: {summary['job']}",
        "",
        f"Aggregator **{summary['aggregator']}**, {summary['rounds']} rounds, seed {summary['seed']}, "
        f"{summary['wall_seconds']:.1f} s wall.",
        "",
        f"- mean accuracy over the sites (federated model): **{_fmt(summary.get('mean_site_accuracy'))}**",
    ]
    if "pooled_accuracy" in summary:
        lines += [
            f"- pooled training (simulation-only upper reference): {_fmt(summary['pooled_accuracy'])}",
            f"- local-only, mean over sites: {_fmt(summary['mean_local_only_accuracy'])}",
        ]
    lines += ["", "| site | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, vals in summary["sites"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(vals.get(c, "")) for c in cols) + " |")
    lines += [
        "",
        "`local_only_accuracy`: the model trained on that site alone, scored on every site's test "
        "set and averaged (the published convention); `local_only_own_accuracy`: on its own test set.",
        "",
        f"![accuracy per round]({plot.name})",
        "",
    ]
    lines += _privacy_lines(summary.get("privacy", {}))
    for extra in summary.get("report_sections", []):
        lines += [extra, ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path

"""Does the federation pay? Per site, the job's main metric with the federation against alone, and,
where alone is better, why (report.md and the console of ``fedcore run``).

The federated figure is the final model's score on the site's test set. Where a site alone
scores higher on its own test set, the pooled model (every site's rows in one place) tells the two
causes apart: pooled below alone too means the site's rows differ from the others' (no shared model
serves it better than its own); pooled above alone means the federated training fell short of what
the rows allow (more rounds or local steps may help). Differences within ``TIE`` are not called
either way: a test set of a hundred rows moves AUC by a few hundredths between seeds.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TIE", "gain_lines"]

TIE = 0.005


def _lower(metric: str) -> bool:
    return metric == "cost"  # the one metric where less is better


def _why(site: str, vals: dict[str, Any], metric: str, fed: float, alone: float) -> str:
    pooled = vals.get(f"pooled_own_{metric}")
    if pooled is None:
        return f"{site}: alone scores higher ({alone:.3f} vs {fed:.3f})"
    differ = pooled <= alone if not _lower(metric) else pooled >= alone
    cause = (
        f"its rows differ from the other sites' (all rows pooled also score below alone, {pooled:.3f})"
        if differ
        else f"the federated training fell short of the pooled rows ({pooled:.3f}): more rounds or local "
        "steps may help"
    )
    return f"{site}: alone scores higher ({alone:.3f} vs {fed:.3f}): {cause}"


def gain_lines(summary: dict[str, Any], metric: str) -> list[str]:
    """One line per site: federated minus alone on ``metric``; then the sites where alone wins, with the
    likely cause. Empty without the baselines."""
    sites = summary.get("sites", {})
    key = metric
    rows, behind = [], []
    for site, vals in sorted(sites.items()):
        fed, alone = vals.get(key), vals.get(f"local_only_own_{metric}")
        if fed is None or alone is None:
            continue
        gain = (alone - fed) if _lower(metric) else (fed - alone)
        rows.append(f"{site} {gain:+.3f}")
        if gain < -TIE:
            behind.append(_why(site, vals, metric, fed, alone))
    if not rows:
        return []
    lines = [f"{metric}, federated minus alone, per site: " + ", ".join(rows)]
    return lines + behind

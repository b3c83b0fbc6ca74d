"""Federated analytics with DP on the four heart-disease hospitals: error of each way to combine.

Three statistics at epsilon 1 per site (fedcore's ``QuerySpec``; bounds from the site schema):

- ``count``: patients with ``num > 0``;
- ``mean``: mean age (bounds [18, 100]);
- ``median``: median cholesterol where ``chol > 0`` (a quantile tree, bounds [100, 600]).

For each, the mean absolute error against the exact pooled value (``fedcore.harness.statistics.exact_value``)
over ``--reps`` repetitions of:

1. ``fedcore_per_site``: every site releases its own noisy answer (OpenDP, ``group_releases`` with no
   share: the site policy ``he_noise_share = "full"`` without HE); the coordinator combines the four
   (``fedcore.analytics.combine.estimate``). Also the mean 95% interval width and its coverage.
2. ``central_dp``: a trusted curator holding all rows releases once at the same epsilon (the reference).
3. ``he_shares``: each site adds a 1/4 Polya share of the noise (``Share(0.25, ...)``; policy
   ``he_noise_share = "split"``) and the coordinator sees only the sum, as under HE. The sum is formed
   in plaintext for the repetitions; once per statistic the same integers go through TenSEAL (BFV:
   ``encrypt_integers`` at 4 sites, ``sum_encrypted``, ``decrypt_integers``) to check that the
   ciphertext path gives exactly the same sum, and to time it.
4. ``he_full_noise``: the same with ``Share(1.0, ...)``: every site adds its full noise under HE.
5. ``nvflare_style``: NVIDIA FLARE's federated statistics (no epsilon; "no formal DP: cleansers only").
   Sites send exact local count/sum (and histograms), filtered by FLARE's privacy cleansers (NVFlare
   docs, "Federated Statistics"; ``nvflare.app_common.statistics``): ``MinCountCleanser(min_count=10)``
   drops a site's statistics for a feature with fewer than 10 rows; ``HistogramBinsCleanser(
   max_bins_percent=10)`` drops a site's histogram unless ``bins < 10% of its count``;
   ``AddNoiseToMinMax(0.1, 0.3)`` sends ``min * (1 - r)`` and ``max * (1 + r)``, ``r ~ U(0.1, 0.3)``
   (signs handled as FLARE does), so the global histogram range contains the data. Count and mean are
   then exact (error 0 unless a site is dropped). The median is emulated from the global histogram
   (equal bins between the noisy global min and max), by linear interpolation in the bin where the CDF
   crosses 1/2. 64 bins are asked for, but with 144 to 303 rows per site the bins cleanser allows at
   most 14 bins at every site (a 64-bin histogram needs 641 rows), so the reported FLARE median uses the
   largest bin count every remaining site passes; the 64-bin median with the bins cleanser off is
   recorded too. (NVFlare 2.6 added quantiles from a q-digest sketch, which this does not emulate.)

OpenDP's noise (per-site and central) cannot be seeded; the HE shares, the intervals' Monte Carlo
draws and FLARE's min/max noise come from ``np.random.default_rng(--seed)``.

    python benchmarks/analytics.py [--reps 300] [--quick] [--seed 0]

Prints a table; writes benchmarks/results/analytics.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "statistics.md"
BEGIN, END = "<!-- analytics.json: begin (benchmarks/analytics.py --docs) -->", "<!-- analytics.json: end -->"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _machine import machine  # noqa: E402

from fedcore.analytics.combine import add_releases, estimate  # noqa: E402
from fedcore.analytics.dp import Release, Share  # noqa: E402
from fedcore.analytics.intervals import Interval  # noqa: E402
from fedcore.analytics.query import QuerySpec, parse_queries  # noqa: E402
from fedcore.analytics.rows import grouped_rows, values_of  # noqa: E402
from fedcore.analytics.site import group_releases, lattice_ints  # noqa: E402
from fedcore.config import SiteConfig, load_site  # noqa: E402
from fedcore.data import load_table  # noqa: E402
from fedcore.harness.statistics import exact_value  # noqa: E402
from fedcore.he import (  # noqa: E402
    SecretContext,
    decrypt_integers,
    encrypt_integers,
    generate_keyset,
    sum_encrypted,
)

RESULTS = REPO / "benchmarks" / "results" / "analytics.json"
SITE_NAMES = ("cleveland", "hungary", "switzerland", "va")
EPSILON = 1.0
MIN_SITES = 4
QUERIES: dict[str, dict[str, Any]] = {
    "count": {"name": "count", "stat": "count", "where": "num > 0"},
    "mean": {"name": "mean", "stat": "mean", "column": "age"},
    "median": {
        "name": "median",
        "stat": "quantile",
        "column": "chol",
        "where": "chol > 0",
        "quantiles": [0.5],
    },
}
FLARE_MIN_COUNT, FLARE_MAX_BINS_PERCENT, FLARE_NOISE, FLARE_BINS = 10, 10, (0.1, 0.3), 64
Uniforms = Callable[[int], np.ndarray]


def make_query(raw: dict[str, Any]) -> QuerySpec:
    table = {"job": {"min_sites": MIN_SITES}, "query": [{**raw, "epsilon": EPSILON}]}
    return parse_queries(table, "benchmark").queries[0]


def first(items: list[tuple[str, Interval]]) -> Interval:
    return items[0][1]


def shared(
    query: QuerySpec, sites: Sequence[SiteConfig], rows: Sequence[pd.DataFrame], fraction: float, u: Uniforms
) -> list[list[Release]]:
    return [group_releases(query, s, r, Share(fraction, u)) for s, r in zip(sites, rows, strict=True)]


def he_check(
    query: QuerySpec, per_site: list[list[Release]], keyset: SecretContext, seed: int
) -> dict[str, Any]:
    """One statistic's HE-share releases through TenSEAL: the decrypted sum against the plaintext sum."""
    ints = [lattice_ints(r) for r in per_site]
    public = keyset.public()
    t0 = time.perf_counter()
    sealed = [encrypt_integers(keyset, v) for v in ints]
    total = decrypt_integers(keyset, sum_encrypted(public, sealed))
    ms = (time.perf_counter() - t0) * 1e3
    plain = np.sum(ints, axis=0)
    matches = bool(total.shape == plain.shape and np.array_equal(total, plain))
    # the decrypted integers, back in value units, give the same estimate as the plaintext sum
    template, start, decoded = add_releases(per_site), 0, []
    for r in template:
        n = len(r.values)
        decoded.append(
            dataclasses.replace(r, values=tuple(float(v) * r.granularity for v in total[start : start + n]))
        )
        start += n
    via_he = first(estimate(query, [decoded], np.random.default_rng(seed))).estimate
    via_plain = first(estimate(query, [template], np.random.default_rng(seed))).estimate
    return {
        "matches": matches,
        "ms": round(ms, 2),
        "same_estimate": bool(via_he == via_plain),
        "values": int(plain.size),
    }


def _flare_min(v: float, r: float) -> float:
    """``AddNoiseToMinMax._get_min_value``: the local min pushed outward by a fraction ``r``."""
    return -(1 - r) * 1e-5 if v == 0 else v * (1 - r) if v > 0 else v * (1 + r)


def _flare_max(v: float, r: float) -> float:
    return (1 + r) * 1e-5 if v == 0 else v * (1 + r) if v > 0 else v * (1 - r)


def flare_median(values: Sequence[np.ndarray], bins: int, rng: np.random.Generator) -> float:
    """Global histogram over the noisy global range, median by interpolation within its bin."""
    lo = min(_flare_min(float(v.min()), rng.uniform(*FLARE_NOISE)) for v in values)
    hi = max(_flare_max(float(v.max()), rng.uniform(*FLARE_NOISE)) for v in values)
    counts = np.sum([np.histogram(v, bins=bins, range=(lo, hi))[0] for v in values], axis=0)
    edges = np.linspace(lo, hi, bins + 1)
    cdf = np.concatenate([[0], np.cumsum(counts)])
    target = 0.5 * cdf[-1]
    k = int(np.clip(np.searchsorted(cdf, target, side="left") - 1, 0, bins - 1))
    frac = 0.0 if counts[k] == 0 else (target - cdf[k]) / counts[k]
    return float(edges[k] + frac * (edges[k + 1] - edges[k]))


def flare_bins_allowed(counts: Sequence[int]) -> int:
    """The most bins every site keeps under ``HistogramBinsCleanser``: ``bins < percent / 100 * count``."""
    return min(math.ceil(c * FLARE_MAX_BINS_PERCENT / 100) - 1 for c in counts)


def flare_style(
    query: QuerySpec, rows: Sequence[pd.DataFrame], exact: float, reps: int, rng: np.random.Generator
) -> dict[str, Any]:
    kept = [values_of(query, r) for r in rows]
    kept = [v for v in kept if v.size >= FLARE_MIN_COUNT]  # MinCountCleanser
    out: dict[str, Any] = {"nvflare_style_sites_used": len(kept)}
    if query.stat == "count":
        out["nvflare_style_mae"] = abs(float(sum(v.size for v in kept)) - exact)
    elif query.stat == "mean":
        out["nvflare_style_mae"] = abs(float(sum(v.sum() for v in kept) / sum(v.size for v in kept)) - exact)
    else:
        bins = min(FLARE_BINS, flare_bins_allowed([v.size for v in kept]))
        errs = [abs(flare_median(kept, bins, rng) - exact) for _ in range(reps)]
        errs64 = [abs(flare_median(kept, FLARE_BINS, rng) - exact) for _ in range(reps)]
        out |= {
            "nvflare_style_mae": float(np.mean(errs)),
            "nvflare_style_bins": bins,
            "nvflare_style_64_bins_no_bins_cleanser_mae": float(np.mean(errs64)),
        }
    return out


def ratio_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of ``mean(a) / mean(b)`` for independent samples (delta method)."""
    r = a.mean() / b.mean()
    return float(
        r * math.sqrt((a.std(ddof=1) / a.mean()) ** 2 / a.size + (b.std(ddof=1) / b.mean()) ** 2 / b.size)
    )


def measure(
    key: str,
    sites: Sequence[SiteConfig],
    frames: Sequence[pd.DataFrame],
    reps: int,
    rngs: dict[str, np.random.Generator],
    keyset: SecretContext,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    query = make_query(QUERIES[key])
    rows = [grouped_rows(query, s, f)["all"] for s, f in zip(sites, frames, strict=True)]
    pooled = pd.concat(rows)
    exact = exact_value(query, sites[0], pooled)[0][1]
    u: Uniforms = lambda n: rngs["shares"].random(n)  # noqa: E731
    boot = rngs["intervals"]
    errs: dict[str, list[float]] = {k: [] for k in ("per_site", "central", "shares", "full")}
    widths, covered = [], []
    t0 = time.perf_counter()
    for _ in range(reps):
        per_site = [group_releases(query, s, r, None) for s, r in zip(sites, rows, strict=True)]
        iv = first(estimate(query, per_site, boot))
        errs["per_site"].append(abs(iv.estimate - exact))
        widths.append(iv.high - iv.low)
        covered.append(iv.low <= exact <= iv.high)
        central = group_releases(query, sites[0], pooled, None)
        errs["central"].append(abs(first(estimate(query, [central], boot)).estimate - exact))
        for name, fraction in (("shares", 1 / MIN_SITES), ("full", 1.0)):
            total = add_releases(shared(query, sites, rows, fraction, u))
            errs[name].append(abs(first(estimate(query, [total], boot)).estimate - exact))
    seconds = time.perf_counter() - t0
    mae = {k: np.asarray(v) for k, v in errs.items()}
    ratio = float(mae["shares"].mean() / mae["central"].mean())
    result = {
        "exact": exact,
        "rows_per_site": [len(r) for r in rows],
        "fedcore_per_site_mae": float(mae["per_site"].mean()),
        "fedcore_per_site_interval_width": float(np.mean(widths)),
        "fedcore_per_site_coverage": float(np.mean(covered)),
        "central_dp_mae": float(mae["central"].mean()),
        "he_shares_mae": float(mae["shares"].mean()),
        "he_full_noise_mae": float(mae["full"].mean()),
        **flare_style(query, rows, exact, reps, rngs["flare"]),
        "he_shares_over_central": ratio,
        "he_shares_over_central_se": ratio_se(mae["shares"], mae["central"]),
        "he_within_10pct_of_central": bool(abs(ratio - 1) <= 0.1),
        "seconds": round(seconds, 2),
    }
    check = he_check(query, shared(query, sites, rows, 1 / MIN_SITES, u), keyset, seed)
    return result, check


def table(report: dict[str, Any]) -> str:
    """The markdown table of ``report`` (the JSON this script writes)."""
    lines = [
        f"epsilon {report['epsilon_per_site']:g} per site, {len(report['sites'])} sites, "
        f"{report['reps']} repetitions; mean absolute error against the exact pooled value",
        "",
        "| statistic | exact | per-site | central DP | HE shares | HE full noise | FLARE-style (no DP) "
        "| HE shares / central | per-site 95% coverage | HE path |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in QUERIES:
        s, c = report[key], report["he_ciphertext_check"][key]
        he_path = f"{'exact' if c['matches'] else 'MISMATCH'}, {c['ms']:.0f} ms"
        lines.append(
            f"| {key} | {s['exact']:.4g} | {s['fedcore_per_site_mae']:.3g} | {s['central_dp_mae']:.3g} | "
            f"{s['he_shares_mae']:.3g} | {s['he_full_noise_mae']:.3g} | {s['nvflare_style_mae']:.3g} | "
            f"{s['he_shares_over_central']:.3f} ± {s['he_shares_over_central_se']:.3f} | "
            f"{s['fedcore_per_site_coverage']:.3f} | {he_path} |"
        )
    return "\n".join(lines)


def write_docs(report: dict[str, Any]) -> None:
    """Replace the generated table in docs/statistics.md (between the two markers)."""
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{table(report)}\n{END}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="30 repetitions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--docs", action="store_true", help=f"only rewrite the table in {DOC.relative_to(REPO)}")
    args = ap.parse_args()
    if args.docs:
        write_docs(json.loads(args.out.read_text()))
        return
    reps = 30 if args.quick else args.reps
    rng = np.random.default_rng(args.seed)
    rngs = dict(zip(("shares", "intervals", "flare"), rng.spawn(3), strict=True))
    sites = [load_site(REPO / "examples" / "medical" / "sites" / f"{n}.toml") for n in SITE_NAMES]
    frames = [load_table(s) for s in sites]
    keyset = generate_keyset()
    t0 = time.perf_counter()
    stats, checks = {}, {}
    for key in QUERIES:
        stats[key], checks[key] = measure(key, sites, frames, reps, rngs, keyset, args.seed)
        print(f"{key}: {stats[key]['seconds']:.1f} s", flush=True)
    report = {
        "epsilon_per_site": EPSILON,
        "sites": list(SITE_NAMES),
        "min_sites": MIN_SITES,
        "reps": reps,
        "seed": args.seed,
        **stats,
        "he_ciphertext_check": checks,
        "nvflare_style": {
            "epsilon": None,
            "note": "no formal DP: cleansers only",
            "min_count": FLARE_MIN_COUNT,
            "max_bins_percent": FLARE_MAX_BINS_PERCENT,
            "min_max_noise": list(FLARE_NOISE),
            "bins_requested": FLARE_BINS,
        },
        "notes": [
            "MAE: mean absolute error of the combined estimate against the exact pooled value (clamped to "
            "the schema bounds, as the DP answer is) over `reps` repetitions",
            "per-site, central and HE-full correspond to the site policy he_noise_share = 'full' (every site "
            "adds its full noise); HE-shares to he_noise_share = 'split' (each adds 1/min_sites of it)",
            "HE-shares reaches central-DP accuracy only when all min_sites shares are in the decrypted sum, "
            "the sites trust the coordinator's count of answers in it, and no site shares its key with the "
            "coordinator; with fewer shares the noise is below one central release",
            "OpenDP's noise (per-site, central) cannot be seeded; HE shares, interval draws and FLARE's "
            "min/max noise come from np.random.default_rng(seed)",
            "he_ciphertext_check: one draw of the HE-share releases per statistic through TenSEAL (BFV "
            "default key set): encrypt at 4 sites + sum + decrypt; matches = decrypted sum equals the "
            "plaintext sum of the integers exactly; ms = wall time of that path (key generation excluded)",
            "he_shares_over_central_se: the ratio's standard error from the repetitions (independent "
            "noise; the two MAEs are estimates, so the 10% check can fail by chance at small reps)",
            "nvflare_style: no epsilon, no formal DP: cleansers only (MinCountCleanser 10, "
            "HistogramBinsCleanser 10%, AddNoiseToMinMax 0.1-0.3); count and mean exact; median from a "
            "global equal-bin histogram; 64 bins exceed the bins cleanser at every site (needs >= 641 "
            "rows), so the largest allowed bin count is used (nvflare_style_bins)",
            "median: switzerland has no chol > 0 rows (its cholesterol is all missing, coded 0)",
        ],
        "total_seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("\n" + table(report))
    write_docs(report)
    print(f"wrote {args.out} ({report['total_seconds']} s) and the table in {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()

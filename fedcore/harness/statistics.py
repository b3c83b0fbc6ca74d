"""``fedcore query APP`` and statistics files under ``fedcore run``: a simulated statistics batch.

Everything is checked before Flower starts (the file strictly, every statistic against every
site's schema and classification), then the batch runs through Flower's simulation like a training
job. The run directory gets ``statistics.json`` (what the coordinator saw and combined), and, as
simulation-only references computed here from all sites' rows, the exact pooled value of each
statistic and its error against epsilon (``error_vs_epsilon.png``); ``report.md`` shows them side
by side.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcore.analytics.combine import add_releases, estimate
from fedcore.analytics.dp import Share
from fedcore.analytics.query import QueryJob, QuerySpec, load_queries
from fedcore.analytics.rows import bin_labels, bounds_of, check_query, grouped_rows, values_of
from fedcore.analytics.site import group_releases, histogram_input
from fedcore.analytics.vectors import compact, dump, rows_of
from fedcore.config import SiteConfig, load_site
from fedcore.data import load_table
from fedcore.errors import ConfigError, FedcoreError, PolicyError
from fedcore.harness.app import load_app, run_prepare, simulation_keys, site_states

__all__ = ["EPSILONS", "error_curve", "exact_value", "run_statistics_app", "write_statistics_file"]

EPSILONS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def write_statistics_file(table: Mapping[str, Any], path: Path) -> Path:
    """A statistics table (``[job]`` and ``[[query]]`` of strings, numbers, booleans, lists) as TOML."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(str(v))

    lines = ["[job]", *(f"{k} = {value(v)}" for k, v in table.get("job", {}).items())]
    for q in table.get("query", []):
        lines += ["", "[[query]]", *(f"{k} = {value(v)}" for k, v in q.items() if v is not None)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def exact_value(query: QuerySpec, site: SiteConfig, rows: pd.DataFrame) -> list[tuple[str, float]]:
    """The statistic on ``rows`` without noise (clamped as the DP answer is): a simulation reference."""
    if query.stat == "count":
        return [("count", float(len(rows)))]
    if query.stat == "histogram":
        values, cats = histogram_input(query, site, rows)
        tally = pd.Series(values, dtype=object).value_counts() if values else pd.Series(dtype=float)
        counts = [float(tally.get(c, 0)) for c in cats]
        labels = bin_labels(query.bins) if query.bins else cats
        return [*zip(map(str, labels), counts, strict=True), ("other", float(len(values) - sum(counts)))]
    bounds = bounds_of(query, site)
    assert bounds is not None
    x = np.clip(values_of(query, rows), *bounds)
    if x.size == 0:
        return []
    if query.stat == "quantile":
        # the inverse empirical CDF, as fedcore.analytics.quantiles estimates (never numpy's default)
        return [(f"p{100 * q:g}", float(np.quantile(x, q, method="inverted_cdf"))) for q in query.quantiles]
    if query.stat == "sum":
        return [("sum", float(x.sum()))]
    if query.stat == "variance":
        return [("variance", float(np.var(x, ddof=1)) if x.size > 1 else float("nan"))]
    return [(query.stat, float(x.mean()))]


def _pooled(
    query: QuerySpec, sites: Sequence[SiteConfig], frames: Sequence[pd.DataFrame]
) -> dict[str, pd.DataFrame]:
    per_site = [grouped_rows(query, s, f) for s, f in zip(sites, frames, strict=True)]
    return {label: pd.concat([g[label] for g in per_site]) for label in per_site[0]}


def error_curve(
    query: QuerySpec,
    sites: Sequence[SiteConfig],
    frames: Sequence[pd.DataFrame],
    *,
    share: float | None,
    epsilons: Sequence[float] = EPSILONS,
    reps: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean absolute error of the combined answer (first group, first item) at each epsilon.

    The same releases as the sites make, on the same rows, repeated ``reps`` times (simulation only;
    nothing is charged). ``share``: each site's HE noise share (``None``: per-site answers).
    """
    rng = np.random.default_rng(seed)
    label = next(iter(grouped_rows(query, sites[0], frames[0])))
    truth = exact_value(query, sites[0], _pooled(query, sites, frames)[label])
    if not truth:
        return {}
    item, exact = truth[0]
    errors = []
    for eps in epsilons:
        q = _with_epsilon(query, eps)
        runs = []
        for _ in range(reps):
            noise = None if share is None else Share(share, lambda n: rng.random(n))
            releases = [
                group_releases(q, s, grouped_rows(q, s, f)[label], noise)
                for s, f in zip(sites, frames, strict=True)
            ]
            combined = [add_releases(releases)] if share is not None else releases
            got = dict(estimate(q, combined, rng))[item].estimate
            runs.append(abs(got - exact))
        errors.append(float(np.mean(runs)))
    return {"epsilon": list(epsilons), "mean_abs_error": errors, "item": item, "exact": exact}


def _with_epsilon(query: QuerySpec, eps: float) -> QuerySpec:
    import dataclasses

    return dataclasses.replace(query, epsilon=eps)


def check_batch(job: QueryJob, sites: Sequence[SiteConfig], source: str) -> None:
    """Every statistic against every site's schema, before Flower starts (one line per problem)."""
    problems = []
    if job.min_sites > len(sites):
        problems.append(f"[job] min_sites = {job.min_sites} but the app lists {len(sites)} sites")
    for q in job.queries:
        for s in sites:
            try:
                check_query(q, s)
            except PolicyError as err:
                problems.append(f"{q.name} at site {s.name!r}: {err}")
                break
        bounds = {s.name: bounds_of(q, s) for s in sites}
        if len(set(bounds.values())) > 1:
            problems.append(
                f"{q.name}: the sites declare different bounds for {q.column!r} ({bounds}); give bounds in "
                "the query, or make the site files agree"
            )
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def run_statistics_app(
    root: Path | str,
    statistics_file: Path,
    *,
    out_dir: Path | None = None,
    curves: bool = True,
    state: Path | None = None,
    seed: int | None = None,
    site_files: Sequence[Path] | None = None,
    prepared: bool = False,
    references: bool = True,
) -> dict[str, Any]:
    """Simulate the batch in ``statistics_file`` over the app's sites; write and return the results.

    ``state``: an earlier run's ``sites/`` folder to keep using (one budget with its jobs).
    ``seed``: passed to the app's prepare hook (the data set a job of that seed trains on).
    ``site_files``: the sites to ask (default: the app's). ``prepared``: the app's prepare hook has
    already run for this data set (a job's ``[prepare] statistics``). ``references``: add the exact
    pooled values (and, with ``curves``, the error curves), computed here from every site's rows; a
    job's statistics phase skips them (its sites' rows need not fit in one process).
    """
    from fedcore.flower.simulation import simulate

    app = load_app(root)
    job = load_queries(statistics_file)
    if not prepared:
        run_prepare(app, seed)
    files = list(app.sites if site_files is None else site_files)
    sites = [load_site(p) for p in files]
    check_batch(job, sites, str(statistics_file))
    frames = [load_table(s) for s in sites] if references else []  # fails fast on bad data
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path("runs") / f"{app.root.name}-{job.name}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    states = site_states(sites, out, state)
    public_key = simulation_keys(job.he and job.public_key is None, out, sites, states)
    try:
        simulate(
            app.root,
            statistics_file,
            files,
            out_dir=out,
            he_public_key=public_key,
            state_dir=states,
        )
    except FedcoreError as err:
        raise type(err)(f"{err} [run directory {out}: statistics.json, simulation.log]") from err
    body: dict[str, Any] = json.loads((out / "statistics.json").read_text())
    if references:
        _add_references(body, job, sites, frames, curves=curves)
    (out / "statistics.json").write_text(dump(body))
    from fedcore.analytics.report import write_statistics_report

    write_statistics_report(out, body)
    body["run_dir"] = str(out)
    return body


def _add_references(
    body: dict[str, Any],
    job: QueryJob,
    sites: Sequence[SiteConfig],
    frames: Sequence[pd.DataFrame],
    *,
    curves: bool,
) -> None:
    """The exact pooled values over the sites each row combined, and the error curves."""
    by_name = {s.name: (s, f) for s, f in zip(sites, frames, strict=True)}
    shares = {name: plan.get("plan", {}).get("noise_share", 1.0) for name, plan in body["admission"].items()}
    for q, result in zip(job.queries, body["results"], strict=True):
        exact: dict[tuple[str, tuple[str, ...]], dict[str, float]] = {}  # per group and sites used
        rows = rows_of(result)
        for row in rows:
            names = tuple(row["sites"])
            if not names or row["value"] is None:
                continue
            key = (row["group"], names)
            if key not in exact:
                used = [by_name[s] for s in names]
                pooled = _pooled(q, [u[0] for u in used], [u[1] for u in used])[row["group"]]
                exact[key] = dict(exact_value(q, used[0][0], pooled))
            row["exact_pooled"] = exact[key].get(row["item"])
        result["rows"] = compact(rows)
        if curves:
            share = float(np.mean([shares[s] for s in result["sites"]])) if job.he else None
            result["error_curve"] = error_curve(q, sites, frames, share=share)

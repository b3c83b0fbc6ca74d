"""``fedcore query APP``: one statistic from flags, or a batch from a statistics file, simulated.

    fedcore query examples/medical --stat mean --column age --where "num > 0" --by sex \\
        --by-levels 0,1 --epsilon 0.5
    fedcore query examples/medical --file prevalence        # APP/queries/prevalence.toml
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from fedcore.analytics.vectors import rows_of
from fedcore.errors import ConfigError

__all__ = ["add_query_command", "query_table"]


def _numbers(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give numbers separated by commas, e.g. 20,40,60") from None


def query_table(args: argparse.Namespace) -> dict[str, Any]:
    """The statistics table the flags describe (validated later, as strictly as a file)."""
    if args.stat is None:
        raise ConfigError(
            "give --stat (count, sum, mean, variance, histogram, quantile, proportion) or --file"
        )
    query = {
        "name": args.name or args.stat,
        "stat": args.stat,
        "column": args.column,
        "where": args.where,
        "of": args.of,
        "by": args.by,
        "by_bins": _numbers(args.by_bins, "--by-bins"),
        "by_levels": _numbers(args.by_levels, "--by-levels"),
        "bins": _numbers(args.bins, "--bins"),
        "bounds": _numbers(args.bounds, "--bounds"),
        "quantiles": _numbers(args.quantiles, "--quantiles"),
        "epsilon": args.epsilon,
    }
    job: dict[str, Any] = {"name": args.name or "query", "he": args.he}
    if args.min_sites is not None:
        job["min_sites"] = args.min_sites
    return {"job": job, "query": [{k: v for k, v in query.items() if v is not None}]}


def _statistics_file(args: argparse.Namespace, root: Path, out: Path) -> Path:
    from fedcore.harness.statistics import write_statistics_file

    if args.file is None:
        return write_statistics_file(query_table(args), out / "request.toml")
    if args.stat is not None:
        raise ConfigError("give --file or --stat, not both")
    path = Path(args.file)
    if path.suffix == ".toml" and path.is_file():
        return path
    named = root / "queries" / f"{args.file}.toml"
    if not named.is_file():
        known = sorted(p.stem for p in (root / "queries").glob("*.toml"))
        raise ConfigError(f"no statistics file {args.file!r} (nor {named}); known: {known}")
    return named


def _query(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedcore.analytics.report import console_statistics
    from fedcore.harness.app import load_app
    from fedcore.harness.statistics import run_statistics_app

    app = load_app(args.app)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"{app.root.name}-query-{stamp}"
    body = run_statistics_app(
        args.app, _statistics_file(args, app.root, out), out_dir=out, curves=not args.no_curves
    )
    if body.get("secagg"):  # exact sums under secure aggregation: the sums as they are
        print(json.dumps(body["results"], indent=1))
        print(f"run directory: {body['run_dir']} (statistics.json)", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps([_json_result(r) for r in body["results"]], indent=1))
        return 0
    console = Console()
    console.print(console_statistics(body))
    for r in body["results"]:
        console.print(f"[bold]{r['name']}[/]: {r['noise']}")
    console.print(
        f"run directory: [bold]{body['run_dir']}[/] (statistics.json, report.md, error_vs_epsilon.png)"
    )
    return 0


def _json_result(result: dict[str, Any]) -> dict[str, Any]:
    """``value``, ``low``, ``high``, ``epsilon`` per group (and per site where sites answered alone)."""
    keep = ("group", "item", "value", "low", "high", "exact_pooled", "suppressed_at")
    return {
        "name": result["name"],
        "statistic": result["statistic"],
        "noise": result["noise"],
        "groups": [
            {**{k: row.get(k) for k in keep}, "epsilon": result["epsilon"]} for row in rows_of(result)
        ],
        "per_site": [{**p, "epsilon": result["epsilon"]} for p in result["per_site"]],
    }


def add_query_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = sub.add_parser(
        "query",
        help="federated statistics with DP (simulated over the app's sites)",
        description="One statistic from flags, or a batch from a statistics file (APP/queries/NAME.toml). "
        "Each site answers under its own policy and charges its ledger; the result has 95%% intervals.",
    )
    q.add_argument("app", type=Path, help="app directory, e.g. examples/medical")
    q.add_argument("--file", help="a statistics file: APP/queries/NAME.toml by name, or a path")
    q.add_argument("--stat", help="count | sum | mean | variance | histogram | quantile | proportion")
    q.add_argument("--column", help="the column the statistic is of (not for count, proportion)")
    q.add_argument("--where", help='a filter, e.g. "num > 0 and sex == 1"')
    q.add_argument("--of", help='a proportion\'s event, e.g. "num > 0"')
    q.add_argument("--by", help="a group-by column (categorical, or numeric with --by-bins/--by-levels)")
    q.add_argument(
        "--by-bins", metavar="EDGES", help="bin edges of a numeric group-by column, e.g. 20,40,60,90"
    )
    q.add_argument("--by-levels", metavar="VALUES", help="values of a numeric group-by column, e.g. 0,1")
    q.add_argument("--bins", metavar="EDGES", help="histogram bin edges of a numeric column")
    q.add_argument(
        "--bounds", metavar="LOW,HIGH", help="clamp values to these (default: the schema's bounds)"
    )
    q.add_argument("--quantiles", metavar="LEVELS", help="quantile levels, e.g. 0.5,0.9 (default 0.5)")
    q.add_argument("--epsilon", type=float, help="the epsilon each site spends on the statistic")
    q.add_argument(
        "--he", action="store_true", help="sites encrypt their totals; the coordinator sees only sums"
    )
    q.add_argument("--min-sites", type=int, help="sites that must answer (default 2)")
    q.add_argument("--name", help="a label for the report")
    q.add_argument("--out", type=Path, help="run directory (default: runs/APP-query-TIME)")
    q.add_argument("--json", action="store_true", help="print the results as JSON")
    q.add_argument(
        "--state",
        type=Path,
        metavar="DIR",
        help="keep using the sites of an earlier run (its RUN/sites folder): same ledgers, one budget",
    )
    q.add_argument(
        "--no-curves", action="store_true", help="skip the simulation-only error-vs-epsilon curves"
    )
    q.set_defaults(func=_query)

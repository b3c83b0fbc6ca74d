"""``fedcore init DATA.csv --out APP_DIR --label COLUMN``: a ready simulation app from one CSV.

The command line only: the logic is :func:`fedcore.appinit.init_app`. Wired into ``fedcore`` by
``fedcore.cli`` calling :func:`add_init_command` on its subcommands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape

__all__ = ["add_init_command"]

_DESCRIPTION = """\
Split one CSV into simulated sites and write a ready app: data/, sites/*.toml (the schema inferred,
each column line marked `review:`), jobs/default.toml, dp.toml and he.toml, pyproject.toml and
fedcore_app.py. Nothing is written if APP_DIR exists and is not empty.
"""
_EPILOG = """\
examples:
  fedcore init heart.csv --out apps/heart --label num --positive-above 0
  fedcore init credit.csv --out apps/credit --label risk --positive bad --id customer_id --sites 4
  fedcore init claims.csv --out apps/claims --label fraud --positive 1 --site-column region
"""


def _init(args: argparse.Namespace) -> int:
    from fedcore.appinit import init_app

    result = init_app(
        args.data,
        args.out,
        label=args.label,
        positive=args.positive or (),
        positive_above=args.positive_above,
        sites=args.sites,
        site_column=args.site_column,
        ids=args.id,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
    out = Console(soft_wrap=True)  # commands and paths stay on one line, to copy
    out.print(f"wrote the app [bold]{escape(str(result.app_dir))}[/]: {len(result.files)} files")
    for name, line in result.rows.items():  # what the site's loader will keep, and why it leaves rows out
        out.print(f"  site {escape(name)}: {escape(line)}")
    if result.indicated_columns:
        kept = ", ".join(result.indicated_columns)
        out.print(f"  features with empty values, kept with a NAME=missing input: {escape(kept)}")
    for path in result.files:
        out.print(f"  {escape(str(path.relative_to(result.app_dir)))}")
    out.print("review the lines marked `review:` in sites/*.toml, then run:")
    for command in result.next_commands:
        out.print(f"  [bold]{escape(command)}[/]")
    err = Console(stderr=True, soft_wrap=True)
    for warning in result.warnings:
        err.print(f"[bold yellow]warning:[/] {escape(warning)}")
    return 0


def add_init_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedcore init`` on the ``fedcore`` command's subparsers."""
    p = sub.add_parser(
        "init",
        help="write a simulation app (sites, jobs, Flower components) from one CSV",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", type=Path, metavar="DATA.csv", help="a CSV with a header row (, ; tab or |)")
    p.add_argument("--out", type=Path, required=True, metavar="APP_DIR", help="the app directory to create")
    p.add_argument("--label", required=True, metavar="COLUMN", help="the column the model predicts")
    positive = p.add_mutually_exclusive_group()
    positive.add_argument(
        "--positive",
        nargs="+",
        metavar="VALUE",
        help="label values of the positive class (default: the larger of exactly two values)",
    )
    positive.add_argument(
        "--positive-above", type=float, metavar="X", help="the positive class is label > X (numeric label)"
    )
    split = p.add_mutually_exclusive_group()
    split.add_argument(
        "--sites", type=int, metavar="N", help="split the rows into N sites by a seeded shuffle (default 3)"
    )
    split.add_argument(
        "--site-column", metavar="COLUMN", help="one site per value of COLUMN (an identifier, not a feature)"
    )
    p.add_argument(
        "--id",
        action="extend",
        nargs="+",
        default=[],
        metavar="COLUMN",
        help="identifier columns: kept in the data, never features (repeatable)",
    )
    p.add_argument(
        "--test-fraction", type=float, default=0.3, metavar="F", help="each site's test share (default 0.3)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the shuffle, the sites' splits and the jobs (default 0)",
    )
    p.set_defaults(func=_init)

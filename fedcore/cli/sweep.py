"""``fedcore sweep APP``: a grid of jobs on the in-process engine (``fedcore.harness.sweep``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedcore.errors import ConfigError

__all__ = ["add_sweep_command"]


def _values(text: str | None) -> tuple[Any, ...]:
    """``"fedavg,fedyogi"`` / ``"0.5,1,none"``: each item as TOML (a number stays a number)."""
    if not text:
        return ()
    out: list[Any] = []
    for item in (s.strip() for s in text.split(",")):
        try:
            out.append(json.loads(item))
        except ValueError:
            out.append(item)
    return tuple(out)


def _seed_list(text: str | None, parse: Any) -> tuple[int, ...]:
    if not text:
        return ()
    seeds: tuple[int, ...] | None = parse(text)
    if seeds is None:
        raise ConfigError(f"--seeds {text!r}: give distinct seeds as 42,43,44 or a range 42-46")
    return seeds


def _axes(items: list[str]) -> dict[str, tuple[Any, ...]]:
    axes = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--axis {item!r} must look like section.key=v1,v2, e.g. train.lr=0.001,0.01")
        axes[key.strip()] = _values(values)
    return axes


def _sweep(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedcore.harness.sweep import SEEDED_NOISE, load_grid, parse_seeds, run_sweep

    console = Console(stderr=True)
    grid = load_grid(
        args.grid, job=args.job, seeds=_seed_list(args.seeds, parse_seeds),
        aggregators=_values(args.aggregators), epsilons=_values(args.epsilons), attacks=_values(args.attacks),
        axes=_axes(args.axis), sets=tuple(args.set), reproducible=args.reproducible,
    )  # fmt: skip
    if grid.reproducible:
        console.print(f"[bold red]DP noise: {SEEDED_NOISE}[/]")

    def on_point(i: int, n: int, point: Any, status: str) -> None:
        if not args.quiet:
            console.print(f"[{i}/{n}] {point.label()}, seed {point.seed}: {status}")

    body = run_sweep(args.app, grid, out_dir=args.out, on_point=on_point)
    print((Path(body["out"]) / "sweep.md").read_text(), end="")
    console.print(f"sweep directory: [bold]{body['out']}[/] ({', '.join(body['files'])})")
    return 0


def add_sweep_command(sub: Any) -> None:
    s = sub.add_parser(
        "sweep", help="run a grid of jobs (aggregators x seeds x epsilons x attacks) in one process: one CSV"
    )
    s.add_argument("app", type=Path, help="app directory, e.g. examples/medical")
    s.add_argument("--grid", type=Path, help="a grid file ([sweep]: job, seeds, aggregators, epsilons, ...)")
    s.add_argument(
        "--job", help="the base job: APP/jobs/NAME.toml or a path (default: the grid's, else the app's)"
    )
    s.add_argument("--seeds", metavar="LIST", help="42,43,44 or 42-46")
    s.add_argument("--aggregators", metavar="LIST", help="aggregator names, e.g. fedavg,fedyogi")
    s.add_argument(
        "--epsilons", metavar="LIST", help="[privacy.dpsgd] epsilons; none = without DP, e.g. 1,3,none"
    )
    s.add_argument("--attacks", metavar="LIST", help="[attack] names (simulation only); none = no attack")
    s.add_argument(
        "--axis",
        action="append",
        default=[],
        metavar="SECTION.KEY=V1,V2",
        help="any job key as an axis (repeatable)",
    )
    s.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="a job value for every point"
    )
    s.add_argument(
        "--reproducible",
        action="store_true",
        help="seeded, non-cryptographic DP noise (simulation only, NOT private; stamped on every output)",
    )
    s.add_argument("--out", type=Path, help="folder to write (default: runs/APP-sweep-TIME)")
    s.add_argument("--quiet", action="store_true", help="no line per point")
    s.set_defaults(func=_sweep)

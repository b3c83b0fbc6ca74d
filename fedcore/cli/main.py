"""The ``fedcore`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedcore.errors import ConfigError, FedcoreError

__all__ = ["main"]


def _run(args: argparse.Namespace) -> int:
    import math

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedcore.config import load_job
    from fedcore.harness.app import load_app

    console = Console(stderr=True)
    app = load_app(args.app)
    _check_sites(app, app.job_file(args.job))  # before torch, Ray and Flower load: refused in a second
    job = load_job(
        app.job_file(args.job), [*args.set, *([f"job.rounds={args.rounds}"] if args.rounds else [])]
    )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet,
    ) as progress:
        task = progress.add_task(f"{app.root.name}/{job.name}", total=job.rounds, status="starting sites")

        def on_round(r: Any) -> None:
            metric = job.main_metric  # binary: [evaluate] metric; survival: c_index
            values = [m[metric] for m in r.evaluate.values() if metric in m]
            acc = math.fsum(values) / len(values) if values else math.nan  # nan: every site withheld it
            status = f"round {r.round}: " + (
                "evaluations withheld" if math.isnan(acc) else f"mean {metric} {acc:.3f}"
            )
            if r.rejected:
                status += f" (rejected: {', '.join(r.rejected)})"
            progress.update(task, completed=r.round, status=status)

        from fedcore.harness.runner import run_app, run_seeds

        common = dict(
            job=args.job,
            out_dir=args.out,
            rounds=args.rounds,
            sets=args.set,
            on_round=on_round,
            baselines=not args.no_baselines,
            state=args.state,
        )
        if args.seeds and args.seed is not None:
            raise ConfigError("give --seed or --seeds, not both")
        if args.seeds:

            def on_seed(seed: int) -> None:
                progress.reset(task, description=f"{app.root.name}/{job.name} seed {seed}", status="starting")

            summary = run_seeds(args.app, _seeds(args.seeds), on_seed=on_seed, **common)
        else:
            summary = run_app(args.app, seed=args.seed, **common)
    from fedcore.reporting.gain import gain_lines
    from fedcore.reporting.report import console_table, main_metric, plot_name

    console.print(console_table(summary))
    for line in gain_lines(summary, main_metric(summary)):
        console.print(line, markup=False, highlight=False)
    if dropped := {s: n for s, n in summary.get("dropped_rows", {}).items() if n}:
        counts = ", ".join(f"{s} {n}" for s, n in sorted(dropped.items()))
        console.print(f"rows left out (an empty value in a used column; see report.md): {counts}")
    console.print(f"run directory: [bold]{summary['app']}[/] (summary.json, report.md, {plot_name(summary)})")
    return 0


def _check_sites(app: Any, job_file: Path) -> None:
    """Every site file of ``app``, and its data when the app has no prepare hook (which may write
    it) and the job no other sites: what ``fedcore run`` would refuse later, refused now."""
    from fedcore.config import load_site, read_toml
    from fedcore.harness.app import check_sites_agree

    if "sites" in read_toml(job_file).get("prepare", {}):  # the job's own sites ([prepare] sites)
        return
    sites = [load_site(p) for p in app.sites]
    check_sites_agree(sites)
    if app.prepare is None:
        from fedcore.data import load_table

        for site in sites:
            load_table(site)


def _resume(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedcore.harness.runner import resume_run
    from fedcore.reporting.report import console_table

    console = Console(stderr=True, quiet=args.quiet)

    def on_round(r: Any) -> None:
        console.print(f"round {r.round}: mean accuracy {r.mean_accuracy():.3f}")

    summary = resume_run(args.run, baselines=not args.no_baselines, on_round=on_round)
    Console(stderr=True).print(console_table(summary))
    return 0


def _seeds(text: str) -> list[int]:
    """``"42,43,44"`` or ``"42-46"`` (inclusive) as a list of seeds."""
    try:
        if "-" in text.strip("-"):
            lo, hi = (int(x) for x in text.split("-", 1))
            return list(range(lo, hi + 1))
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give seeds as 42,43,44 or a range 42-46") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedcore", description="privacy-preserving federated learning on Flower")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="simulate every site of an app on this machine")
    r.add_argument(
        "app", type=Path, help="app directory (its pyproject.toml lists the sites), e.g. examples/medical"
    )
    r.add_argument(
        "--job", help="job name (APP/jobs/NAME.toml) or a path to a job file (default: the app's default job)"
    )
    r.add_argument("--out", type=Path, help="run directory to write (default: runs/APP-JOB-TIME)")
    r.add_argument("--rounds", type=int, help="number of federated rounds (default: the job's job.rounds)")
    r.add_argument(
        "--seed",
        type=int,
        help="seed of the run (default: the job's job.seed); an app whose prepare hook takes a seed "
        "also draws its data from it",
    )
    r.add_argument(
        "--seeds",
        metavar="LIST",
        help="run once per seed (42,43,44 or 42-46) into OUT/seed-S and write the mean over seeds to "
        "OUT/summary.json (not with --seed)",
    )
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a job value, e.g. --set train.lr=0.01 (repeatable)",
    )
    r.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip the simulation-only baselines (each site alone, all sites pooled): a faster run",
    )
    r.add_argument(
        "--quiet", action="store_true", help="no progress display (the summary table is still printed)"
    )
    r.add_argument(
        "--state",
        type=Path,
        metavar="DIR",
        help="keep using the sites of an earlier run (its RUN/sites folder): same ledgers, one budget",
    )
    r.set_defaults(func=_run)
    rs = sub.add_parser(
        "resume", help="continue a simulated run whose coordinator stopped, from its checkpoint"
    )
    rs.add_argument("run", type=Path, help="the run directory `fedcore run` wrote (holds checkpoint.npz)")
    rs.add_argument("--no-baselines", action="store_true", help="skip the simulation-only baselines")
    rs.add_argument("--quiet", action="store_true", help="no per-round lines (the summary is still printed)")
    rs.set_defaults(func=_resume)
    from fedcore.cli.admin import add_admin_commands

    add_admin_commands(sub)
    from fedcore.cli.init import add_init_command

    add_init_command(sub)
    from fedcore.cli.query import add_query_command

    add_query_command(sub)
    from fedcore.cli.console import add_console_commands

    add_console_commands(sub)
    from fedcore.cli.approval import add_approval_commands

    add_approval_commands(sub)
    from fedcore.cli.secagg import add_secagg_commands

    add_secagg_commands(sub)
    from fedcore.cli.sweep import add_sweep_command

    add_sweep_command(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FedcoreError as err:
        print(f"fedcore: error: {err}", file=sys.stderr)
        return _leave(130) if isinstance(err.__cause__, KeyboardInterrupt) else 2  # Ctrl-C, checkpointed
    except KeyboardInterrupt:
        print("fedcore: interrupted", file=sys.stderr)
        return _leave(130)


def _leave(code: int) -> int:
    """After Ctrl-C in a simulation, Flower's engine threads can wait forever on the Ray actors the
    interrupt stopped, and Python waits for them at exit: end the process now. What a run leaves
    on disk survives this as it survives SIGKILL (checkpoints, ledgers, audit logs and stored
    replies are written atomically; tests/flower/test_resume.py)."""
    import os
    import threading

    main = threading.main_thread()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not main):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())

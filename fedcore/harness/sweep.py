"""``fedcore sweep APP``: a grid of jobs (aggregators x seeds x epsilons x attacks x any job key) on the
in-process engine, written as one CSV row per grid point, a Markdown table and a plot.

Every point is the app's job with the point's values set, run by ``fedcore.harness.loop.run_inprocess``
(the sites' own runtimes, guards and ledgers, as through Flower; new site state per point) and scored
by the simulation harness on every site's test rows with the job's task metrics. A point a site
refuses (a task its labels do not serve, a DP setting its policy forbids, ...) is a row whose
``status`` is ``refused`` and whose ``reason`` is the site's one line (a job with HE or secure
aggregation, which the engine neither encrypts nor masks, is refused whole, before any point); a
point whose epsilon a site lowered to its cap (``max_epsilon_per_job``) ran, and its ``status`` is
``capped``, with each such site's charge in ``reason``. Either way the grid goes on.

The grid (``--grid grid.toml``, and/or the flags of ``fedcore sweep``)::

    [sweep]
    job = "default"                       # APP/jobs/NAME.toml or a path (default: the app's job)
    seeds = [42, 43, 44]                  # or "42-46"
    aggregators = ["fedavg", { name = "fedyogi", server_lr = 0.01 }]
    epsilons = [0.5, 1.0, "none"]         # [privacy.dpsgd] epsilon; "none": without DP-SGD
    attacks = ["none", { name = "sign_flip", sites = ["va"] }]   # [attack] (simulation only)
    reproducible = false                  # seeded, non-cryptographic DP noise (below)
    [sweep.set]                           # fixed for every point, as --set
    "job.rounds" = 5
    [sweep.axes]                          # any other job key, one axis each
    "train.lr" = [0.001, 0.01]

**Reproducible mode** (``reproducible = true`` / ``--reproducible``): every point's job carries
``[job] reproducible = true`` and each simulated site draws its DP noise and sampling from a seeded
torch generator (``fedcore.privacy.rng.seeded_source``, from the job seed and the site's name), so a
rerun gives the same figures. That noise protects nothing (whoever knows the seed removes it): it is
for simulation only. Sites served through Flower refuse such a job (``JobRequest.from_wire``), so
``fedcore node`` never draws it, and every output it touches says so (the CSV's ``noise`` column,
the table's title, the plot's title, ``sweep.json``).
"""

from __future__ import annotations

import copy
import itertools
import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcore.config import Reader, parse_job, read_toml
from fedcore.config.job import JobSpec, apply_overrides
from fedcore.config.reader import raise_problems
from fedcore.errors import ConfigError, FedcoreError
from fedcore.harness.app import AppSpec, load_app, run_prepare

__all__ = [
    "SEEDED_NOISE",
    "SweepGrid",
    "SweepPoint",
    "SweepRow",
    "job_table",
    "load_grid",
    "points",
    "run_sweep",
]

SEEDED_NOISE = "SEEDED (reproducible mode: simulation only, NOT private)"
SECURE_NOISE = "secure (CSPRNG)"
NONE = "none"


@dataclass(frozen=True)
class SweepGrid:
    """The axes of a sweep: named ones, any job key (``axes``), and what every point shares."""

    job: str | None = None
    seeds: tuple[int, ...] = (42,)
    aggregators: tuple[Any, ...] = ()
    epsilons: tuple[Any, ...] = ()
    attacks: tuple[Any, ...] = ()
    axes: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    sets: tuple[str, ...] = ()
    reproducible: bool = False

    def named_axes(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The non-empty axes other than seeds, in a fixed order (the CSV's columns)."""
        named = [("aggregator", self.aggregators), ("epsilon", self.epsilons), ("attack", self.attacks)]
        return [(k, v) for k, v in [*named, *self.axes.items()] if v]


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: its axis values (labels for the table) and its seed."""

    values: Mapping[str, Any]
    seed: int

    def label(self) -> str:
        return ", ".join(f"{k}={_label(v)}" for k, v in self.values.items()) or "job as written"


def _label(value: Any) -> str:
    if isinstance(value, Mapping):
        rest = ",".join(f"{k}={v}" for k, v in value.items() if k != "name")
        return f"{value.get('name', '?')}" + (f"({rest})" if rest else "")
    return str(value)


def parse_seeds(value: Any) -> tuple[int, ...] | None:
    """Distinct integers ``[42, 43]``, or a range ``"42-46"`` / list ``"42,43"`` as text; None if neither."""
    if isinstance(value, str):
        lo, sep, hi = value.partition("-")
        if sep and lo.strip().isdigit() and hi.strip().isdigit():
            return tuple(range(int(lo), int(hi) + 1))
        items = [v.strip() for v in value.split(",")]
        value = [int(v) for v in items] if all(v.isdigit() for v in items) else None
    ok = isinstance(value, list) and bool(value) and len(set(value)) == len(value)
    return tuple(value) if ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value) else None


def _seeds(value: Any, t: Reader) -> tuple[int, ...]:
    seeds = parse_seeds(value)
    if seeds is None:
        t.problem("seeds", f'must be distinct integers [42, 43] or a range "42-46", got {value!r}')
    return seeds or (42,)


def load_grid(path: Path | None, **flags: Any) -> SweepGrid:
    """A grid from ``path`` (``[sweep]``, strict) with ``flags`` (non-empty ones) taking precedence."""
    problems: list[str] = []
    raw = read_toml(path) if path is not None else {}
    top = Reader(raw, str(path or "the command line"), problems)
    t = top.sub("sweep", doc="the grid")
    seeds = _seeds(t.value("seeds", [42]), t)
    lists = {k: tuple(t.value(k, [], kind="list")) for k in ("aggregators", "epsilons", "attacks")}
    fixed = t.sub("set", doc="job values every point shares, as --set")
    sets = tuple(f"{k}={json.dumps(v)}" for k, v in fixed.table.items())
    fixed.done(extra_known=fixed.table)
    extra = t.sub("axes", doc="job keys (section.key) and their values, one axis each")
    axes = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in extra.table.items()}
    extra.done(extra_known=extra.table)
    grid = SweepGrid(
        job=t.string("job", None), seeds=seeds, axes=axes, sets=sets,
        reproducible=t.boolean("reproducible", False), **lists,
    )  # fmt: skip
    t.done()
    top.done()
    raise_problems(problems, "invalid sweep grid")
    given = {k: v for k, v in flags.items() if v not in (None, (), [], False, {})}
    if "axes" in given:
        given["axes"] = {**grid.axes, **given["axes"]}
    if "sets" in given:
        given["sets"] = (*grid.sets, *given["sets"])
    return SweepGrid(**{**grid.__dict__, **given})


def points(grid: SweepGrid) -> list[SweepPoint]:
    """Every combination of the axes, for every seed (seeds innermost)."""
    axes = grid.named_axes()
    names = [k for k, _ in axes]
    combos = itertools.product(*(values for _, values in axes)) if axes else [()]
    return [SweepPoint(dict(zip(names, combo, strict=True)), s) for combo in combos for s in grid.seeds]


def job_table(base: Mapping[str, Any], point: SweepPoint, *, reproducible: bool) -> dict[str, Any]:
    """The base job's table with the point's values set (a new table)."""
    table = copy.deepcopy(dict(base))
    table.setdefault("job", {})["seed"] = point.seed
    for key, value in point.values.items():
        if key == "aggregator":
            table["aggregator"] = dict(value) if isinstance(value, Mapping) else {"name": str(value)}
        elif key == "epsilon":
            _set_epsilon(table, value)
        elif key == "attack":
            table.pop("attack", None)
            if value != NONE:
                table["attack"] = dict(value) if isinstance(value, Mapping) else {"name": str(value)}
        else:
            table = apply_overrides(table, [f"{key}={json.dumps(value)}"])
    if reproducible:
        table["job"]["reproducible"] = True
    return table


def _set_epsilon(table: dict[str, Any], value: Any) -> None:
    privacy = table.setdefault("privacy", {})
    if value == NONE:
        privacy.pop("dpsgd", None)
        if not privacy:
            table.pop("privacy")
        return
    privacy.setdefault("dpsgd", {"delta": 1e-5, "max_grad_norm": 1.0})["epsilon"] = value


@dataclass
class SweepRow:
    point: SweepPoint
    status: str = "ok"
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def run_sweep(
    root: Path | str,
    grid: SweepGrid,
    *,
    out_dir: Path | None = None,
    on_point: Callable[[int, int, SweepPoint, str], None] | None = None,
) -> dict[str, Any]:
    """Run every point of ``grid`` on ``root``'s sites; write ``sweep.csv``, ``sweep.md``,
    ``sweep.png`` and ``sweep.json`` into ``out_dir``; return what ``sweep.json`` holds."""
    from fedcore.harness.sweep_output import write_outputs

    app = load_app(root)
    job_file = app.job_file(grid.job)
    base = apply_overrides(read_toml(job_file), list(grid.sets))
    _refuse_engine_gaps(parse_job(base, str(job_file)))  # the base job must be valid, before any point runs
    out = (
        Path(out_dir) if out_dir else Path("runs") / f"{app.root.name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    out.mkdir(parents=True, exist_ok=True)
    todo = points(grid)
    rows = []
    for i, point in enumerate(todo, start=1):
        row = _run_point(app, base, point, grid, str(job_file))
        rows.append(row)
        if on_point is not None:
            on_point(i, len(todo), point, row.status if row.status == "ok" else f"{row.status}: {row.reason}")
    return write_outputs(
        out, grid, rows, job_file=job_file, noise=SEEDED_NOISE if grid.reproducible else SECURE_NOISE
    )


def _refuse_engine_gaps(spec: JobSpec) -> None:
    """The in-process engine neither encrypts nor masks: a job that asks for HE or secure aggregation
    is refused rather than swept without it (its figures would be labelled with a protection they
    never had; secure aggregation's distributed noise would be missing from them)."""
    what = "[privacy.he]" if spec.he is not None else "[privacy.secagg]" if spec.secagg is not None else None
    if what is not None:
        raise ConfigError(
            f"job {spec.name!r} uses {what}, which `fedcore sweep` cannot run (its in-process engine "
            f"neither encrypts nor masks): sweep a copy of the job without {what}, or run each point "
            "with `fedcore run`"
        )


def _run_point(
    app: AppSpec, base: Mapping[str, Any], point: SweepPoint, grid: SweepGrid, source: str
) -> SweepRow:
    from fedcore.harness.loop import run_inprocess

    row = SweepRow(point)
    t0 = time.perf_counter()
    try:
        spec = parse_job(
            job_table(base, point, reproducible=grid.reproducible), f"{source} ({point.label()})"
        )
        run_prepare(app, point.seed, data=spec.prepare_data)
        with tempfile.TemporaryDirectory(prefix="fedcore-sweep-") as state:
            arrays, sites = run_inprocess(spec, app.sites, seed=point.seed, state_dir=Path(state))
            row.metrics = _point_metrics(spec, arrays, sites)
            _check_cap(row, sites)
    except ConfigError as err:
        row.status, row.reason = "invalid", str(err).replace("\n", " ")
    except FedcoreError as err:  # a site's refusal (its cap, its labels, ...): this point only
        row.status, row.reason = "refused", str(err).replace("\n", " ")
    row.seconds = time.perf_counter() - t0
    return row


def _check_cap(row: SweepRow, sites: Sequence[Any]) -> None:
    """A site whose cap lowered the point's epsilon (it charges at most ``max_epsilon_per_job``) makes
    the row ``capped``: it ran, at less than the grid asked."""
    asked = row.point.values.get("epsilon")
    if not isinstance(asked, int | float) or isinstance(asked, bool):
        return
    lowered = [
        f"{s.name} charged {row.metrics[f'{s.name}.epsilon']:.3g} (max_epsilon_per_job "
        f"{s.site.policy.max_epsilon_per_job:g})"
        for s in sites
        if row.metrics[f"{s.name}.epsilon"] < 0.95 * float(asked)
    ]
    if lowered:
        row.status = "capped"
        row.reason = f"epsilon {asked:g} asked; " + ", ".join(lowered)


def _point_metrics(spec: JobSpec, arrays: Sequence[np.ndarray], sites: Sequence[Any]) -> dict[str, float]:
    """The final model's task metrics per site and their means, the task's reference, and what each
    site's ledger charged for the job (``epsilon`` max and mean over sites)."""
    from fedcore.clients.evaluation import evaluate_site
    from fedcore.models import build_model, set_arrays
    from fedcore.reporting.released import mean_metrics

    model = build_model(spec.model.as_table(), len(sites[0].data.features), seed=0)
    set_arrays(model, tuple(np.asarray(a, dtype=np.float64) for a in arrays))
    per = {s.name: evaluate_site(model, s.data, spec.evaluate, spec.task) for s in sites}
    ref = {s.name: spec.task.reference(s.data.y_train, s.data.y_test) for s in sites}
    out = {f"mean_site_{k}": v for k, v in mean_metrics(per).items()}
    out.update({f"mean_{k}": v for k, v in mean_metrics(ref).items()})
    for name, vals in per.items():
        out.update({f"{name}.{k}": v for k, v in {**vals, **ref[name]}.items() if k != "n"})
    charged = [s.guard.ledger.spent(s.site.dataset)[0] for s in sites]  # fresh state: this job only
    out.update({f"{s.name}.epsilon": e for s, e in zip(sites, charged, strict=True)})
    out["epsilon_max"], out["epsilon_mean"] = float(max(charged)), float(np.mean(charged))
    return out

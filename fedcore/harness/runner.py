"""``fedcore run APP``: simulate every site of an app on this machine and write a run directory.

Everything is validated before Flower starts, so a bad site or job file fails in a second with a
clear message instead of after Ray has booted.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedcore.analytics.query import is_statistics
from fedcore.config import SiteConfig, load_job, load_site, read_toml
from fedcore.data import prepare_site
from fedcore.errors import ConfigError, FedcoreError
from fedcore.harness.app import (
    AppSpec,
    check_baseline_drop,
    check_sites_agree,
    load_app,
    run_prepare,
    simulation_keys,
    site_states,
    with_sites,
)
from fedcore.harness.attacks import attack_hooks, check_attack
from fedcore.harness.attacks import stamp as stamp_attack
from fedcore.harness.secagg_keys import simulation_identities
from fedcore.harness.statistics import run_statistics_app
from fedcore.harness.summary import average_runs, build_summary
from fedcore.site.guard import state_paths

__all__ = ["resume_run", "run_app", "run_seeds"]


def _overrides(rounds: int | None, seed: int | None, sets: Sequence[str]) -> list[str]:
    out = list(sets)
    if rounds is not None:
        out.append(f"job.rounds={rounds}")
    if seed is not None:
        out.append(f"job.seed={seed}")
    return out


def run_app(
    root: Path | str,
    *,
    job: str | None = None,
    out_dir: Path | None = None,
    rounds: int | None = None,
    seed: int | None = None,
    sets: Sequence[str] = (),
    baselines: bool = True,
    on_round: Callable[[Any], None] | None = None,
    state: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Validate, simulate, compute baselines, write the run directory; return the summary.

    ``state``: the sites' state folder of an earlier run (its ``sites/``) to keep using, so that
    jobs and statistics draw on the same ledgers; default: new sites in ``out_dir/sites``.
    ``resume``: continue the job checkpointed in ``out_dir`` (see ``resume_run``).
    """
    from fedcore.flower.simulation import simulate
    from fedcore.reporting.report import write_report

    app = load_app(root)
    job_file = app.job_file(job)
    if is_statistics(read_toml(job_file)):  # a statistics file runs like a job: `fedcore run APP --job F`
        if rounds is not None or seed is not None or sets:
            raise ConfigError(f"{job_file} is a statistics file: --rounds, --seed and --set do not apply")
        return run_statistics_app(root, job_file, out_dir=out_dir, curves=baselines, state=state)
    overrides = _overrides(rounds, seed, sets)
    spec = load_job(job_file, overrides)
    if spec.reproducible:  # sites served through Flower refuse seeded noise (JobRequest.from_wire)
        raise ConfigError(f"{job_file}: [job] reproducible = true is for `fedcore sweep --reproducible` only")
    if spec.prepare_sites is not None:
        app = with_sites(app, job_file.parent / spec.prepare_sites)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path("runs") / f"{app.root.name}-{spec.name}-{stamp}"
    if not resume:  # a resumed run keeps the data and sites its first start prepared
        run_prepare(app, spec.seed, data=spec.prepare_data)
    if spec.prepare_statistics is not None and not resume:
        statistics = job_file.parent / spec.prepare_statistics
        state = _statistics_first(app, statistics, spec.seed, out, state, data=spec.prepare_data)
    site_cfgs = [load_site(p) for p in app.sites]
    check_baseline_drop(spec.baselines.drop, site_cfgs, job_file)
    if spec.min_sites > len(site_cfgs):
        raise ConfigError(
            f"{job_file}: [job] min_sites = {spec.min_sites} but the app lists {len(site_cfgs)} sites; "
            f"lower min_sites or add sites to {app.root / 'pyproject.toml'}"
        )
    if spec.sites_per_round is not None and spec.sites_per_round > len(site_cfgs):
        raise ConfigError(
            f"{job_file}: [job] sites_per_round = {spec.sites_per_round} but the app lists "
            f"{len(site_cfgs)} sites; lower sites_per_round or add sites to {app.root / 'pyproject.toml'}"
        )
    check_sites_agree(site_cfgs)
    check_attack(spec, [s.name for s in site_cfgs], str(job_file))
    datas = [prepare_site(s) for s in site_cfgs]  # fails fast on bad data
    out.mkdir(parents=True, exist_ok=True)
    states = site_states(site_cfgs, out, state)
    public_key = simulation_keys(spec.he is not None and spec.he.public_key is None, out, site_cfgs, states)
    simulation_identities(spec.secagg is not None, site_cfgs, states)
    if not resume:  # what `fedcore resume` needs to start the same job again
        run = {"app": str(app.root), "job_file": str(job_file), "overrides": overrides, "state": str(states)}
        (out / RUN_FILE).write_text(json.dumps(run, indent=1))
    t0, started = time.perf_counter(), time.time()
    try:
        simulate(
            app.root,
            job_file,
            list(app.sites),
            overrides=overrides,
            out_dir=out,
            on_round=on_round,
            he_public_key=public_key,
            state_dir=states,
            resume=out if resume else None,
            **attack_hooks(spec),
        )
    except KeyboardInterrupt as interrupt:  # Ctrl-C: a job with a checkpoint of this run resumes
        stopped = _interrupted(out, interrupt, since=None if resume else started)
        failed = {"app": str(out), "job": spec.name, "failed": str(stopped)}
        (out / "summary.json").write_text(json.dumps(failed, indent=2))
        raise stopped from interrupt
    except FedcoreError as err:  # the one line goes to the summary too; tracebacks are in the logs
        failed = {"app": str(out), "job": spec.name, "failed": str(err)}
        (out / "summary.json").write_text(json.dumps(failed, indent=2))
        logs = "simulation.log, sites/<site>/node.log"
        raise type(err)(f"{err} [run directory {out}: {logs}]") from err
    wall = time.perf_counter() - t0
    if spec.he is not None:  # the coordinator has no plaintext model: keep a copy of a site that has it
        final = json.loads((out / "metrics.json").read_text())["rounds"][-1]["evaluate"]  # sampled: not all
        holder = next((s for s in site_cfgs if s.name in final), site_cfgs[0])
        shutil.copyfile(state_paths(holder, states).folder / "model.npz", out / "model.npz")
    summary = build_summary(spec, out, wall, datas, app.sites, baselines=baselines)
    stamp_attack(summary, spec)
    _charged_from_ledgers(summary, site_cfgs, states)
    if spec.prepare_statistics is not None:
        _add_ledger_totals(summary, site_cfgs, states, out / "statistics" / "statistics.json")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out, summary)
    return summary


RUN_FILE = "run.json"


def _interrupted(out: Path, interrupt: KeyboardInterrupt, *, since: float | None) -> FedcoreError:
    """What a Ctrl-C during a simulation becomes: ``JobStoppedError`` (continue with `fedcore resume`)
    when ``out`` holds a checkpoint of this run (written after ``since``; any, for a resumed run),
    else the interrupt itself goes on (nothing to resume)."""
    from fedcore.flower.checkpoint import checkpoint_path, job_stopped, load_checkpoint

    path = checkpoint_path(out)
    if not path.is_file() or (since is not None and path.stat().st_mtime < since):
        raise interrupt
    ckpt = load_checkpoint(out)
    return job_stopped(ckpt.request, ckpt.round, out, interrupt)


def resume_run(
    run_dir: Path, *, baselines: bool = True, on_round: Callable[[Any], None] | None = None
) -> dict[str, Any]:
    """Continue the simulated job of ``run_dir`` from its last checkpoint (``checkpoint.npz``): the
    same app, job file, overrides and site state folder, the same job id and digest, the rounds after
    the checkpoint only. The sites answer under the plan they admitted and charge nothing twice."""
    from fedcore.flower.checkpoint import load_checkpoint

    spec_file = run_dir / RUN_FILE
    if not spec_file.is_file():
        raise ConfigError(
            f"{run_dir} is not a resumable run directory (no {RUN_FILE}); give the RUN folder that "
            "`fedcore run` wrote"
        )
    try:
        run = json.loads(spec_file.read_text())
        app, job_file, sets, state = run["app"], run["job_file"], list(run["overrides"]), Path(run["state"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{spec_file} is unreadable ({err!r}); the run cannot be resumed") from err
    ckpt = load_checkpoint(run_dir)  # fails here, before Flower starts, when there is none
    if (run_dir / "summary.json").is_file() and (run_dir / "model.npz").is_file():
        done = json.loads((run_dir / "summary.json").read_text())
        if "failed" not in done:
            raise ConfigError(f"the job of {run_dir} finished (round {ckpt.round}); nothing to resume")
    return run_app(
        Path(app), job=job_file, out_dir=run_dir, sets=sets, state=state, baselines=baselines,
        on_round=on_round, resume=True,
    )  # fmt: skip


def _statistics_first(
    app: AppSpec, statistics: Path, seed: int, out: Path, state: Path | None, *, data: str | None = None
) -> Path:
    """A job's ``[prepare] statistics``: the batch runs through Flower on the sites' ledgers (kept
    for the training that follows: one budget), then the prepare hook gets what it released."""
    if not statistics.is_file():
        raise ConfigError(f"[prepare] statistics: {statistics} does not exist")
    sites = [load_site(p) for p in app.sites]
    out.mkdir(parents=True, exist_ok=True)
    states = site_states(sites, out, state)
    first = out / "statistics"
    run_statistics_app(
        app.root,
        statistics,
        out_dir=first,
        state=states,
        site_files=app.sites,
        prepared=True,
        references=False,  # the exact pooled values need every bank's rows in this process
    )
    run_prepare(app, seed, statistics=first / "statistics.json", data=data)
    return states


def _charged_from_ledgers(summary: dict[str, Any], sites: Sequence[SiteConfig], states: Path) -> None:
    """Each site's charge for the job as its ledger holds it (``privacy.sites.<site>.epsilon``): the
    figure its last train reply carried misses a DP evaluation charged after it, and the ledger
    (``fedcore ledger``) is the authority."""
    from fedcore.site.ledger import PrivacyLedger

    job_id = summary.get("job_id")
    for site in sites:
        entry = summary["privacy"]["sites"].get(site.name)
        if not job_id or entry is None or not entry.get("accepted", True):
            continue
        ledger = PrivacyLedger(state_paths(site, states).ledger, site=site.name)
        charged = ledger.job_charge(job_id)
        if charged is not None:
            entry["epsilon"] = charged[0]
            entry["remaining_epsilon"] = ledger.remaining(site.dataset)[0]


def _add_ledger_totals(
    summary: dict[str, Any], sites: Sequence[SiteConfig], states: Path, statistics: Path
) -> None:
    """What each site's ledger holds after a job with a statistics phase: the statistics' charge and
    the total of everything charged (statistics and training, composed), each per its unit."""
    from fedcore.site.ledger import PrivacyLedger

    body = json.loads(statistics.read_text())
    summary["prepare_statistics"] = {"job_id": body.get("job_id"), "run_dir": str(statistics.parent)}
    for site in sites:
        plan = body.get("admission", {}).get(site.name, {}).get("plan", {})
        spent, delta = PrivacyLedger(state_paths(site, states).ledger, site=site.name).spent(site.dataset)
        summary["privacy"]["sites"].setdefault(site.name, {}).update(
            statistics_epsilon=plan.get("epsilon"), statistics_unit=plan.get("unit"),
            ledger_epsilon_total=spent, ledger_delta=delta,
        )  # fmt: skip


def run_seeds(
    root: Path | str,
    seeds: Sequence[int],
    *,
    out_dir: Path | None = None,
    job: str | None = None,
    on_seed: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``run_app`` once per seed into ``out_dir/seed-<s>``; ``out_dir/summary.json`` holds the mean.

    Every number of the per-seed summaries (top level and per site) is averaged over the seeds; the
    standard deviations sit under ``sd_over_seeds`` with the same keys, and ``per_seed`` names each
    seed's run directory. Text fields (``privacy`` included) are the first seed's. With a prepare
    hook that takes ``seed`` (see ``run_prepare``) the seed also draws the app's data.
    """
    from fedcore.reporting.report import write_report

    if len(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs distinct seeds, got {list(seeds)}")
    app = load_app(root)
    name = load_job(app.job_file(job), list(kwargs.get("sets", ()))).name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path("runs") / f"{app.root.name}-{name}-seeds-{stamp}"
    runs = []
    for s in seeds:
        if on_seed is not None:
            on_seed(s)
        runs.append(run_app(root, job=job, out_dir=out / f"seed-{s}", seed=s, **kwargs))
    summary = {
        **{k: v for k, v in runs[0].items() if not _is_number(v) and k != "sites"},
        **average_runs(runs, np.mean),
        "app": str(out),
        "seed": ", ".join(map(str, seeds)),
        "seeds": list(seeds),
        "sd_over_seeds": average_runs(runs, np.std),
        "per_seed": {str(s): str(out / f"seed-{s}") for s in seeds},
    }
    for key in [k for k in runs[0] if k.startswith("per_round_mean_")]:  # accuracy and the main metric
        summary[key] = [
            None if None in per_round else float(np.mean(per_round))
            for per_round in zip(*(r[key] for r in runs), strict=True)
        ]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out, summary)
    return summary


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)

"""The federated loop in one process, without Flower: for simulation-only references and tests.

``run_inprocess`` runs a job's rounds over site runtimes exactly as the Flower apps do (admission,
the same ``SiteRuntime.train`` behind the same guard, the same aggregator inside the job's
algorithm's server part and its extras, a simulated ``[attack]`` and the norm screen, float32 on the
wire; HE is left out: its sum equals the plaintext one up to rounding). ``fedcore run`` uses it for the
local-only baseline under the job's privacy (a federation of one site); the tests use it as the
oracle the Flower adapter must match.
"""

from __future__ import annotations

import dataclasses
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedcore.aggregators import Arrays, ClientUpdate
from fedcore.aggregators.screen import Screened, screen_norms
from fedcore.aggregators.wrappers import build_aggregator
from fedcore.algorithms import ServerAlgorithm, make_algorithm
from fedcore.clients.runtime import SiteRuntime
from fedcore.config.job import JobRequest, JobSpec, parse_job
from fedcore.config.site import SiteConfig, load_site
from fedcore.errors import UpdateError
from fedcore.harness.attacks import PoisonedLabels, UpdateAttacks, check_attack
from fedcore.models import build_model, get_arrays
from fedcore.site.guard import init_site_state

__all__ = ["run_inprocess", "with_seed"]


def with_seed(spec: JobSpec, seed: int) -> JobSpec:
    """``spec`` with ``[job] seed`` replaced (validated again)."""
    table = {**spec.table, "job": {**spec.table["job"], "seed": seed}}
    return parse_job(table, f"job {spec.name!r} with seed {seed}")


def run_inprocess(
    spec: JobSpec,
    site_files: Sequence[Path],
    *,
    seed: int,
    state_dir: Path | None = None,
    min_sites_floor: int | None = None,
    drop: Sequence[str] = (),
    screened: list[Screened] | None = None,
) -> tuple[Arrays, list[SiteRuntime]]:
    """Final global model and the site runtimes; each site's state is created in ``state_dir``
    (a temporary folder when ``None``) and charged as in a real run. ``min_sites_floor`` replaces
    the sites' own floor (the one-site references of the simulation harness); ``drop``: feature
    columns the sites leave out (a job's ``[baselines] drop``, for those references);
    ``screened``: gets each round's ``Screened`` (what the norm screen rejected and clipped)."""
    spec = with_seed(spec, seed)
    with tempfile.TemporaryDirectory(prefix="fedcore-loop-") as tmp:
        where = state_dir if state_dir is not None else Path(tmp)
        configs = [without(_floor(load_site(p), min_sites_floor), drop) for p in site_files]
        for site in configs:
            init_site_state(site, where)
        check_attack(spec, [c.name for c in configs], f"job {spec.name!r}")
        sites = [SiteRuntime(c, where) for c in configs]
        request = JobRequest(f"inprocess-{uuid.uuid4().hex[:12]}", len(sites), spec)
        for s in sites:
            s.simulation = PoisonedLabels() if spec.attack is not None else None
            s.admit(request, actor="simulation")
        algorithm = make_algorithm(spec.algorithm.name, spec.algorithm.options)
        agg = algorithm.server(
            build_aggregator(spec.aggregator.name, spec.aggregator.options), num_sites=len(sites)
        )
        tamper = UpdateAttacks(spec.attack, seed) if spec.attack is not None else None
        g = get_arrays(build_model(spec.model.as_table(), len(sites[0].data.features), seed=seed))
        for r in range(1, spec.rounds + 1):
            g = _wire(g)  # as on the wire
            sent = agg.broadcast([a.shape for a in g]) if isinstance(agg, ServerAlgorithm) else {}
            ups = []
            for s in sites:
                res = s.train(request, server_round=r, global_arrays=g, actor="simulation", received=sent)
                up = ClientUpdate(
                    res.delta, round(res.weight), s.name, extras={k: _wire(v) for k, v in res.extras.items()}
                )
                ups.append(up)
            ups = tamper(ups, r) if tamper is not None else ups
            screen = screen_norms(ups, max_norm=spec.max_update_norm, max_ratio=spec.max_norm_ratio)
            ups = screen.updates
            if screened is not None:
                screened.append(screen)
            if len(ups) < spec.min_sites:
                raise UpdateError(
                    f"round {r}: {len(ups)} valid updates, the job needs min_sites={spec.min_sites}"
                )
            g = tuple(a + b for a, b in zip(g, agg.aggregate(ups, server_round=r).step, strict=True))
    return g, sites


def _wire(arrays: Arrays) -> Arrays:
    """``arrays`` as float32 on the wire and back."""
    return tuple(np.asarray(a, np.float32).astype(np.float64) for a in arrays)


def without(site: SiteConfig, drop: Sequence[str]) -> SiteConfig:
    """``site`` with the feature columns ``drop`` left out of the model as well."""
    extra = tuple(d for d in drop if d not in site.drop)
    return dataclasses.replace(site, drop=(*site.drop, *extra)) if extra else site


def _floor(site: SiteConfig, floor: int | None) -> SiteConfig:
    if floor is None:
        return site
    return dataclasses.replace(site, policy=dataclasses.replace(site.policy, min_sites=floor))

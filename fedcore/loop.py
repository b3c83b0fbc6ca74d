"""The federated loop in one process, without Flower: for simulation-only references.

``run_inprocess`` runs a job's rounds over site runtimes exactly as the Flower apps do (the same
``SiteRuntime.train``, the same aggregator, float32 on the wire). ``fedcore run`` uses it for the
local-only baseline under the job's privacy (a federation of one site); the tests use it as the
oracle the Flower adapter must match.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedcore.aggregators import Arrays, ClientUpdate, make_aggregator
from fedcore.clients.job import JobPrivacy
from fedcore.clients.site import SiteRuntime, round_seed
from fedcore.clients.trainer import TrainConfig
from fedcore.config import JobConfig
from fedcore.models import build_model, get_arrays

__all__ = ["run_inprocess"]


def run_inprocess(
    job: JobConfig, site_files: Sequence[Path], *, seed: int, state_dir: Path | None = None
) -> tuple[Arrays, list[SiteRuntime]]:
    """Final global model and the site runtimes; with ``state_dir`` the job's [privacy] applies
    (each site's ledger lives there and is charged as in a real run)."""
    sites = [SiteRuntime.load(p, state_dir) for p in site_files]
    privacy = None
    if state_dir is not None:
        privacy = JobPrivacy.from_job(
            job.raw, job_id=f"inprocess-{seed}", num_sites=len(sites), min_sites=len(sites)
        )
    agg_opts = {k: v for k, v in job.section("aggregator").items() if k != "name"}
    agg = make_aggregator(str(job.section("aggregator")["name"]), **agg_opts)
    spec = job.section("model")
    g = get_arrays(build_model(spec, len(sites[0].data.features), seed=seed))
    train = job.train_section()
    cfg = TrainConfig.from_mapping(train)
    for r in range(1, job.rounds + 1):
        g = tuple(a.astype(np.float32).astype(np.float64) for a in g)  # as on the wire
        ups = []
        for s in sites:
            res = s.train(
                g,
                model_spec=spec,
                cfg=cfg,
                steps=int(train["local_steps"]),
                seed=round_seed(seed, r, s.site.name),
                job=privacy,
            )
            ups.append(ClientUpdate(delta=res.delta, num_examples=res.num_examples, site=s.site.name))
        g = tuple(a + b for a, b in zip(g, agg.aggregate(ups, server_round=r).step, strict=True))
    return g, sites
